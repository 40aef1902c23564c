"""What every data tool shares: progress (a bar or plain lines), the end-of-run summary, atomic file writes."""

import io
import tarfile
from collections.abc import Iterator

from rich.console import Console
from rich.table import Table

# every tool's writes: a temp file beside the target (umask permissions), fsynced, renamed only when complete,
# so readers never see half a shard and a killed run leaves at most a `.NAME.tmp-<hex>` file behind
from wan_train.fileio.durable import atomic_path, write_bytes as write_atomic  # noqa: F401 (re-exported)
from wan_train.progress import progress as _progress

console = Console(stderr=True)


def progress():
    """Usage: `with progress() as bar: task = bar.add_task("shards", total=n); ...; bar.advance(task)`: a live
    bar on a terminal, plain lines at least every 30 s in a log file (wan_train.progress)."""
    return _progress(console=console)


def summary(title: str, rows: dict[str, object]) -> None:
    table = Table(title=title, show_header=False)
    for name, value in rows.items():
        table.add_row(name, str(value))
    console.print(table)


# tar member fields that would otherwise come from the writing machine and moment: shards are byte-reproducible
TAR_FIELDS = {"mtime": 0, "uid": 0, "gid": 0, "uname": "", "gname": "", "mode": 0o644}


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for field, value in TAR_FIELDS.items():
        setattr(info, field, value)
    tar.addfile(info, io.BytesIO(data))


def shard_urls(parser, patterns: list[str], *, option: str = "") -> list[str]:
    """The shard URLs the CLI's patterns name (wan_train.data.shards.expand_urls); a usage error when none."""
    from wan_train.data.shards import expand_urls

    urls = expand_urls(patterns)
    if not urls:
        parser.error(f"{option + ' ' if option else ''}{' '.join(patterns)} matched no shards")
    return urls


def shard_samples_until_damaged(url: str, on_damage) -> Iterator[dict]:
    """The samples of one shard in order; where the shard cannot be read (from the start or part-way: a tarfile
    ReadError, an OSError, a failing pipe) on_damage(error) is called once and the shard ends there."""
    from wan_train.data.shards import shard_samples

    samples = shard_samples(url)
    while True:
        try:
            sample = next(samples)
        except StopIteration:
            return
        except Exception as error:  # every way a shard can be unreadable
            on_damage(error)
            return
        yield sample
