"""Progress wherever the output goes: plain lines off a terminal (a start line, at least every 30 s, the end)."""

import io

from rich.console import Console

from wan_train.progress import PlainProgress, progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_at_start_every_30_s_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    with PlainProgress("shards", stream=out, clock=clock) as bar:
        task = bar.add_task("make_shards", total=100)
        for i in range(100):
            clock.now += 1.0  # one item a second: a line every 30 items
            bar.advance(task)
    lines = out.getvalue().splitlines()
    assert lines[0] == "make_shards: 0/100 shards  -/s  0:00:00 elapsed"
    assert [line.split("  ")[0] for line in lines] == ["make_shards: 0/100 shards", "make_shards: 30/100 shards",
                                                       "make_shards: 60/100 shards", "make_shards: 90/100 shards",
                                                       "make_shards: 100/100 shards"]
    assert lines[1] == "make_shards: 30/100 shards  1.00/s  0:00:30 elapsed  0:01:10 left"
    assert lines[-1].endswith("0:01:40 elapsed  0:00:00 left")


def test_a_task_without_total_and_a_renamed_one():
    out, clock = io.StringIO(), Clock()
    with PlainProgress(stream=out, clock=clock) as bar:
        task = bar.add_task("samples")
        clock.now = 31
        bar.update(task, advance=62, description="samples (shard 2)")
    assert out.getvalue().splitlines()[1:] == ["samples (shard 2): 62  2.00/s  0:00:31 elapsed"]


def test_a_terminal_gets_the_live_bar_and_a_file_the_lines():
    assert not isinstance(progress(console=Console(file=io.StringIO(), force_terminal=True)), PlainProgress)
    assert isinstance(progress(console=Console(file=io.StringIO())), PlainProgress)


def test_training_step_lines_every_n_steps_and_at_least_every_30_s(monkeypatch, caplog):
    from types import SimpleNamespace

    from wan_train.training import callbacks

    clock = Clock()
    monkeypatch.setattr(callbacks.time, "monotonic", clock)
    lines = callbacks.ProgressLines(100, bar=False)
    trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=1, is_global_zero=True, max_steps=300,
                              callback_metrics={})
    lines.on_train_start(trainer, None)
    with caplog.at_level("INFO", logger="wan_train.progress"):
        for step in range(1, 301):
            clock.now += 0.1 if step <= 200 else 20.0  # slow steps after 200: time, not the count, says when
            trainer.global_step = step
            lines.on_train_batch_end(trainer, None, None, None, step - 1)
    said = [int(r.getMessage().split()[1].split("/")[0]) for r in caplog.records]
    assert said[:2] == [100, 200] and said[2:] == list(range(202, 301, 2))  # each >= 30 s apart, and the last
