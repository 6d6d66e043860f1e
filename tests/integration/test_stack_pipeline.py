"""The stack's own pipeline, as `make up` started it, runs at the stack's parallelism (issue 17:
every operator at 2 unless IMGSTREAM_FLINK_PARALLELISM says otherwise), so each decide stage
holds half of the index on its own subtasks. It once ran at 1 while everything said 2: the
Flink CLI had taken the program's `--parallelism=2` as its own `-p`."""

from __future__ import annotations

from flink_jobs import submit, testing
from flink_jobs.config import PipelineConfig
from imgstream.polling import until_sync


def test_the_stacks_pipeline_runs_every_operator_at_the_stack_parallelism(stack_env, stack_config) -> None:
    expected = PipelineConfig.from_env(stack_env, submit.stack_args([], stack_env)).parallelism
    name, rest = PipelineConfig().job_name, stack_config.flink_rest
    # another test may have it stopped for a moment (a savepoint and a resume): wait for it
    job_id = until_sync(lambda: submit.running_jobs(stack_env).get(name), f"{name} running",
                        timeout=testing.DEADLINE_S, interval=testing.CHECK_EVERY_S)
    vertices = testing.vertex_parallelism(rest, job_id)
    assert any("decide: exact" in vertex for vertex in vertices), vertices
    assert set(vertices.values()) == {expected}, vertices
    assert testing.flink_get(rest, f"/jobs/{job_id}/config")["execution-config"]["job-parallelism"] == expected
