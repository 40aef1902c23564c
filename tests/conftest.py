import os

import pytest
import torch


def pytest_report_header(config):
    from tests.slurm_cluster import missing_programs

    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA: gpu tests skipped"
    missing = missing_programs()
    slurm = (f"not installed ({', '.join(missing)}): SLURM tests skipped" if missing else
             "a one-machine cluster starts for the SLURM tests (tests/slurm_cluster.py)")
    return [f"torch {torch.__version__} ({cuda})", f"slurm: {slurm}"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _config_folder(tmp_path_factory):
    """wan_train's per-installation files (the C2PA signer, the watermark key) in a folder of the test session,
    never the user's ~/.config/wan_train; subprocesses inherit it."""
    os.environ["WAN_TRAIN_CONFIG_DIR"] = str(tmp_path_factory.mktemp("wan_train_config"))
    yield


@pytest.fixture(autouse=True)
def _environment():
    """Each test leaves os.environ as it found it, whatever wrote to it: Lightning's SLURMEnvironment sets
    MASTER_ADDR from a simulated SLURM_NODELIST, and every later job submitted from this process would inherit it."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-machine SLURM cluster (tests/slurm_cluster.py) for the whole session, or a skip that says why
    (slurm-wlm or munge not installed, not root, a daemon that would not start)."""
    from tests.slurm_cluster import Cluster, ClusterUnavailable

    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterUnavailable as error:
        cluster.stop()
        pytest.skip(f"no SLURM cluster: {error}")
    Cluster.active = cluster
    yield cluster
    Cluster.active = None
    cluster.stop()
