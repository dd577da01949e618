"""WebDataset shards: reproducible bytes, readable by webdataset, unsafe tar members refused."""

from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.shards import ShardWriter, iter_samples, read_at, unsafe_member_reason
from foundation.errors import CorruptInput


def write_shard(path):
    with ShardWriter(path) as writer:
        for i in range(3):
            writer.write(f"k{i}", {"jpg": bytes([i]) * 10, "json": {"key": f"k{i}", "b": 1, "a": 2}})
    return path.read_bytes()


def test_same_samples_give_same_bytes(tmp_path):
    assert write_shard(tmp_path / "a.tar") == write_shard(tmp_path / "b.tar")


def test_webdataset_reads_what_we_write(tmp_path):
    write_shard(tmp_path / "a.tar")
    samples = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["k0", "k1", "k2"]
    assert samples[1]["json"] == {"key": "k1", "a": 2, "b": 1}
    assert [key for key, _ in iter_samples(tmp_path / "a.tar")] == ["k0", "k1", "k2"]


def test_a_failed_write_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "x.tar") as writer:
        writer.write("k", {"jpg": b"1"})
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../x.jpg", "/etc/x.jpg", "a/../../x.jpg"])
def test_escaping_member_names_are_unsafe(name):
    assert unsafe_member_reason(tarfile.TarInfo(name)) is not None


def test_links_are_unsafe_and_reading_refuses_them(tmp_path):
    link = tarfile.TarInfo("k.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    assert "link" in unsafe_member_reason(link)
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.addfile(link)
        evil = tarfile.TarInfo("../evil.jpg")
        evil.size = 3
        tar.addfile(evil, io.BytesIO(b"abc"))
    with pytest.raises(CorruptInput, match="link"):
        list(iter_samples(tmp_path / "bad.tar"))


def test_headers_are_what_tarfile_reads(tmp_path):
    write_shard(tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members][:2] == ["k0.jpg", "k0.json"]
        assert all(m.isfile() and m.mode == 0o444 and m.mtime == 0 and m.uid == 0 for m in members)
        assert tar.extractfile("k2.jpg").read() == bytes([2]) * 10
    assert (tmp_path / "a.tar").stat().st_size % 10240 == 0


def test_the_writer_says_where_each_member_lies_and_read_at_reads_it_there(tmp_path):
    offsets = {}
    with ShardWriter(tmp_path / "a.tar") as writer:
        for i, size in enumerate([0, 1, 511, 512, 513, 5000]):
            at = writer.write(f"k{i}", {"jpg": bytes([i + 1]) * size, "json": {"key": f"k{i}"}})
            offsets[f"k{i}.jpg"] = (at["jpg"], size)
            offsets[f"k{i}.json"] = (at["json"], len(b'{"key":"k0"}'))
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert {m.name: (m.offset_data, m.size) for m in tar} == offsets
    found = read_at(tmp_path / "a.tar", {name: offsets[name] for name in ("k5.jpg", "k2.jpg", "k3.json")})
    assert found == {"k5.jpg": bytes([6]) * 5000, "k2.jpg": bytes([3]) * 511, "k3.json": b'{"key":"k3"}'}


@pytest.mark.parametrize(
    "wrong",
    [
        {"k1.jpg": (512, 1)},  # another member's offset
        {"k3.jpg": (4 * 512, 511)},  # k2.jpg's offset and size under another name
        {"k5.jpg": (0, 5000)},  # before the first header
        {"k4.jpg": (1 << 20, 513)},  # past the end
    ],
)
def test_read_at_refuses_an_index_that_does_not_match_the_tar(tmp_path, wrong):
    with ShardWriter(tmp_path / "a.tar") as writer:
        for i, size in enumerate([0, 1, 511, 512, 513, 5000]):
            writer.write(f"k{i}", {"jpg": bytes([i + 1]) * size})
    with pytest.raises(CorruptInput, match=rf"^(tar|cannot read tar) {tmp_path / 'a.tar'}"):
        read_at(tmp_path / "a.tar", wrong)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    cut=st.integers(0, 8000),
    offset=st.one_of(st.sampled_from([512, 1024, 2560]), st.integers(-1024, 9000)),  # the members' own, or any
    size=st.one_of(st.sampled_from([0, 700, 5000]), st.integers(0, 6000)),
    flip=st.integers(0, 7999),
)
def test_read_at_with_any_index_or_damage_gives_the_members_bytes_or_a_corrupt_input(
    tmp_path_factory, cut, offset, size, flip
):
    """A stale or wrong index, a cut or a flipped byte: read_at returns what lies at the member's
    own place or raises CorruptInput, never another member's bytes or another exception (a flipped
    byte inside the data is read as it is; `lvd verify` checks the sha256)."""
    path = tmp_path_factory.mktemp("fuzz") / "a.tar"
    with ShardWriter(path) as writer:
        real = {
            f"k{i}.jpg": (writer.write(f"k{i}", {"jpg": bytes([i + 1]) * n})["jpg"], n)
            for i, n in enumerate([0, 700, 5000])
        }
    data = bytearray(path.read_bytes()[:cut])
    if flip < len(data):
        data[flip] ^= 0xFF
    path.write_bytes(bytes(data))
    for name in real:
        try:
            found = read_at(path, {name: (offset, size)})
        except CorruptInput:
            continue
        assert (offset, size) == real[name] and found[name] == bytes(data[offset : offset + size])
