import torch

from gmia.data.datasets import PhantomFolder
from gmia.data.phantoms import write
from gmia.data.phantoms.memory import PhantomDataset
from tests.conftest import toy_phantom_set


def test_in_memory_samples_equal_the_written_folder(tmp_path):
    ps = toy_phantom_set(patients=3, studies=2, size=16, channels=3)
    write(ps, tmp_path)
    disk, mem = PhantomFolder(tmp_path), PhantomDataset(ps)
    assert len(mem) == len(disk) == 6 and mem.findings == disk.findings
    for i in range(len(mem)):
        a, b = mem[i], disk[i]
        assert a["key"] == b["key"] and a["patient"] == b["patient"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["labels"], b["labels"])


def test_split_selects_whole_patients():
    ps = toy_phantom_set(patients=4, studies=3)
    test = PhantomDataset(ps, split="test")
    assert len(test) == 3 and set(test.patients()) == {"p00003"}
    assert len(test.select([0, 2])) == 2 and test.select([2])[0]["key"] == test[2]["key"]
