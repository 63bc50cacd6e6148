"""The API fixes glibc's mmap threshold, so freed decoding buffers leave the process and the
pixel budget bounds its peak memory (docs/deployment.md, bench.sizing)."""

import platform

import pytest

from service.allocator import return_large_blocks_to_os


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_mmap_threshold_is_fixed_on_glibc():
    assert return_large_blocks_to_os() is True


def test_create_app_sets_it(monkeypatch):
    import service.app as app_module
    from service.settings import ApiSettings

    calls = []
    monkeypatch.setattr(app_module, "return_large_blocks_to_os", lambda: calls.append(1) or True)
    app_module.create_app(ApiSettings(redis_url="redis://127.0.0.1:1/0"))
    assert calls == [1]
