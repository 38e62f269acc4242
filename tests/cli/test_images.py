"""End-to-end tests of `imagefolder:` data decoded per batch: generated folders of JPEG (some
grayscale, some CMYK) and PNG files of mixed sizes, trained on by a small RGB CNN scripted here.
The pixels themselves are compared with torchvision's in tests/unit/test_plugins_images.cpp.

Environment (set by CTest): see ttq_testing.py.
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

import torch
import torch.nn as nn

from test_distributed import finish, free_port, start_ranks
from ttq_testing import SharedWorkdir, ttq

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")


def make_folder(path, *args):
    subprocess.run([sys.executable, os.path.join(SCRIPTS, "make_image_folder.py"), path, *args], check=True)


class RgbNet(nn.Module):
    """No BatchNorm: ranks with half batches train exactly as one process."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.fc(x)


def parameters(path):
    return dict(torch.jit.load(path).named_parameters())


class ImageFolders(SharedWorkdir):
    @classmethod
    def setUpShared(cls):
        cls.folder = cls.shared_path("imagenet")
        make_folder(cls.folder, "--classes", "3", "--train", "16", "--val", "4", "--mixed", "40,300", "--png", "--gray",
                    "--cmyk")
        cls.flat = cls.shared_path("flat")
        make_folder(cls.flat, "--classes", "3", "--train", "10", "--mixed", "24,60", "--png", "--flat")
        torch.manual_seed(0)
        cls.model = cls.shared_path("rgb_net.pt")
        torch.jit.save(torch.jit.script(RgbNet()), cls.model)

    def finetune_args(self, out, folder, *args, size="32", batch="8"):
        # Adam: this small net learns (with SGD it stays at chance, whatever the pixels).
        return ["finetune", self.model, "-o", self.out(out), "--data", "imagefolder:" + folder, "--image-size", size,
                "--batch-size", batch, "--seed", "5", "--threads", "1", "--init", "mean", "--optimizer", "adam", "--lr",
                "0.003", "--no-progress", *args]

    def finetune(self, out, folder, *args, size="32"):
        return ttq(*self.finetune_args(out, folder, *args, size=size))

    def assert_same_models(self, a, b, exact=True):
        pa, pb = parameters(self.out(a)), parameters(self.out(b))
        for name in pa:
            same = torch.equal(pa[name], pb[name]) if exact else torch.allclose(pa[name], pb[name], rtol=1e-4, atol=1e-6)
            self.assertTrue(same, name)

    def test_any_number_of_workers_gives_the_same_model(self):
        for workers in ("1", "3"):
            r = self.finetune("w%s.pt" % workers, self.folder, "--workers", workers, "--max-steps", "6")
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_same_models("w1.pt", "w3.pt")

    def test_resume_in_the_middle_of_an_epoch_gives_the_same_model(self):
        r = self.finetune("full.pt", self.folder, "--epochs", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        ck = self.out("ck")
        r = self.finetune("resumed.pt", self.folder, "--epochs", "2", "--checkpoint-dir", ck, "--max-steps", "9")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.finetune("resumed.pt", self.folder, "--epochs", "2", "--checkpoint-dir", ck, "--resume")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("resuming from", r.stderr)
        self.assert_same_models("full.pt", "resumed.pt")

    def test_the_epoch_line_reports_the_loader(self):
        r = self.finetune("m.pt", self.folder, "--epochs", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"epoch 1/1: .*; loader \d+ img/s, training waited on data \d+% of the time")
        self.assertIn("after 6 steps", r.stdout)  # 48 images, batches of 8

    def test_two_ranks_decode_their_halves_and_train_as_one_process(self):
        r = self.finetune("one.pt", self.folder, "--max-steps", "6")
        self.assertEqual(r.returncode, 0, r.stderr)
        port = str(free_port())
        ranks = [self.finetune_args("two.pt", self.folder, "--max-steps", "6", "--world-size", "2", "--master-port", port,
                                    "--rank", str(rank), batch="4") for rank in (0, 1)]
        results = finish(start_ranks(ranks))
        self.assertEqual([rc for rc, _, _ in results], [0, 0], results)
        self.assert_same_models("two.pt", "one.pt", exact=False)

    def test_a_corrupt_image_stops_with_its_name_or_is_skipped(self):
        folder = self.out("corrupt")
        shutil.copytree(self.folder, folder)
        bad = os.path.join(folder, "train", "class1", "000004.JPEG")
        with open(bad, "r+b") as f:
            f.truncate(os.path.getsize(bad) // 3)
        # -q: the line of the start's validation (which reads val/, not the bad image) is left out.
        self.assert_one_error_line(self.finetune("m.pt", folder, "--epochs", "1", "-q"), 1,
                                   "000004.JPEG: cannot decode image")
        self.assertFalse(os.path.exists(self.out("m.pt")))
        r = self.finetune("m.pt", folder, "--skip-bad-images", "--epochs", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.count("000004.JPEG"), 1, r.stderr)  # reported once, not every epoch or batch
        self.assertRegex(r.stderr, r"skipping .*000004\.JPEG: cannot decode image .*\(1 bad image so far\)")

    def test_a_folder_without_splits_holds_out_a_stratified_fraction(self):
        r = ttq("eval", self.model, "--data", "imagefolder:" + self.flat, "--image-size", "32", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["samples"], 3)  # one of each class's 10
        self.assertIn("3 of 30 images held out for validation (--val-fraction 0.1)", r.stderr)
        r = ttq("eval", self.model, "--data", "imagefolder:" + self.flat, "--val-fraction", "0.5", "--json")
        self.assertEqual(json.loads(r.stdout)["samples"], 15)
        # --val names a folder to validate on: all of it.
        r = ttq("eval", self.model, "--data", "imagefolder:" + self.folder, "--val", "imagefolder:" + self.flat,
                "--json")
        self.assertEqual(json.loads(r.stdout)["samples"], 30)

    def test_cached_images_give_the_same_model(self):
        # Crops of 160 px from images of at most 300: decoded at full size with or without the cache
        # (no DCT downscaling), the cache holding whole images and not the rows one crop needed.
        for name, extra in (("plain.pt", []), ("cached.pt", ["--cache-images"])):
            r = self.finetune(name, self.folder, "--epochs", "3", *extra, size="160")
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_same_models("plain.pt", "cached.pt")

if __name__ == "__main__":
    unittest.main()
