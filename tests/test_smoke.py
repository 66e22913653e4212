def test_stories_loads(stories, heldout):
    from autoprune.evaluation import perplexity

    assert 3 < perplexity(stories.model, heldout).perplexity < 8
