"""The check every bad-input test makes: one line on stderr, exit code 2, no traceback."""

from autoprune.cli import main


def one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
