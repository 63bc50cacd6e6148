"""Each process fixes glibc's thresholds for what it allocates (worker.allocator): the API unmaps
freed decoding buffers, so the pixel budget bounds its peak (docs/deployment.md, bench.sizing); the
worker keeps its forward passes' blocks, so a pass does not fault in fresh pages for every
activation (docs/performance.md, bench.cpu_defaults)."""

import platform
import subprocess
import sys
import textwrap

import pytest

from tests.procs import ROOT
from worker.allocator import return_large_blocks_to_os

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc only")

# A pass in miniature: six 4 MiB activations alive at once, then all freed, 20 times; prints the
# page faults that took. A fresh process each: the thresholds are process-wide.
FAULTS_OF_20_PASSES = textwrap.dedent("""
    import resource, sys
    from worker import allocator
    if sys.argv[1] != "glibc":
        getattr(allocator, sys.argv[1])()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def one_pass():
        activations = [bytearray(4 << 20) for _ in range(6)]  # zero-filled: every page is touched
        del activations
    one_pass()  # the first pass faults its pages in whatever the setting
    before = faults()
    for _ in range(20):
        one_pass()
    print(faults() - before)
""")


def page_faults_of_20_passes(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS_OF_20_PASSES, setting], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.strip())


@glibc_only
def test_the_api_fixes_the_mmap_threshold():
    assert return_large_blocks_to_os() is True


@glibc_only
def test_the_worker_reuses_a_pass_s_blocks_where_glibc_and_the_api_fault_them_in_again():
    # 24 MiB is 6,144 pages. glibc's own thresholds settle at 4 MiB (mmap) and 8 MiB (trim): the
    # heap is trimmed after each pass and the next one faults most of it in again. The API's
    # setting unmaps every block. The worker's keeps them.
    pages_per_pass = 6 * 1024
    assert page_faults_of_20_passes("glibc") > 20 * pages_per_pass // 2
    assert page_faults_of_20_passes("return_large_blocks_to_os") > 20 * pages_per_pass
    worker = page_faults_of_20_passes("reuse_tensor_blocks")
    assert worker < pages_per_pass, f"the worker's setting faulted {worker} pages in 20 passes"


def test_create_app_sets_it(monkeypatch):
    import service.app as app_module
    from service.settings import ApiSettings

    calls = []
    monkeypatch.setattr(app_module, "return_large_blocks_to_os", lambda: calls.append(1) or True)
    app_module.create_app(ApiSettings(redis_url="redis://127.0.0.1:1/0"))
    assert calls == [1]


def test_the_worker_sets_it_before_loading_its_model(monkeypatch):
    import worker.main as main_module
    from worker.settings import WorkerSettings

    calls = []

    class Stop(Exception):
        pass

    def runtime(_settings):
        calls.append("runtime")
        raise Stop

    monkeypatch.setattr(main_module, "reuse_tensor_blocks", lambda: calls.append("allocator") or True)
    monkeypatch.setattr(main_module, "Runtime", runtime)
    with pytest.raises(Stop):
        main_module.main(WorkerSettings(redis_url="redis://127.0.0.1:1/0"))
    assert calls == ["allocator", "runtime"]
