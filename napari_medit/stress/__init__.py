"""RadEdit's stress tests of a user's model (seed 000, Secs. 5.2-5.4): scenarios, the model under
test's contract, generation through the batch, filtering, and the report."""

from .scenarios import SCENARIOS, Scenario, ScenarioSpec, Task, scenario

__all__ = ["SCENARIOS", "Scenario", "ScenarioSpec", "Task", "scenario", "stress_test"]


def stress_test(*args, **kwargs):
    """See ``napari_medit.stress.run.stress_test`` (imported on first use: it needs torch)."""
    from .run import stress_test as run

    return run(*args, **kwargs)
