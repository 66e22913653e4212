"""The search layer: strategies that propose candidates and are told their proxy results (ask /
tell, ``registry``), the scheduler that decides what runs, executors that run it where the model
is, the validator, and the runner that journals every event (``runner``)."""
