"""Training helpers: tiling invariance, patch targets under flips, recall threshold, AUC, CLI options;
and (slow) a tiny end-to-end training run."""
import argparse
from dataclasses import replace

import numpy as np
import pytest
import torch

from cmbdetect.models.detector import predict_volume
from cmbdetect.models.networks import CentreNet3D
from cmbdetect.models.train_stage1 import Stage1Volume, cosine_lr, make_batch, recall_threshold, train_detector
from cmbdetect.models.train_stage2 import microbleed_auc
from cmbdetect.physics.errors import InputError


def test_tiled_inference_matches_whole_volume():
    torch.manual_seed(0)
    net = CentreNet3D(2, base=4, depth=1).eval()
    x = np.random.default_rng(0).normal(size=(2, 40, 36, 28)).astype(np.float32)
    whole, size_w = predict_volume(net, x, tile=64, overlap=0)
    tiled, size_t = predict_volume(net, x, tile=24, overlap=12)
    assert whole.shape == tiled.shape == (20, 18, 14)
    # identical away from the tile seams' receptive-field reach; everywhere close
    assert np.abs(whole - tiled).max() < 0.05
    assert np.median(np.abs(whole - tiled)) < 1e-3
    assert size_w.min() >= 0


def test_make_batch_flips_targets_with_inputs():
    x = np.zeros((1, 16, 16, 16), np.float32)
    x[0, 4, 6, 8] = 1.0
    vol = Stage1Volume(x, np.ones((16, 16, 16), bool), np.array([1.0, 1.0, 1.0]), np.array([[4.0, 6.0, 8.0]]),
                       np.array([3.0]), ["microbleed"])
    for seed in range(6):
        xb, hb, sb = make_batch([vol], [(0, (0, 0, 0))], patch=16, stride=2, sigma_mm=1.0,
                                rng=np.random.default_rng(seed))
        src = np.argwhere(xb[0, 0].numpy() == 1.0)[0]
        peak = np.argwhere(hb[0, 0].numpy() == 1.0)[0]
        # the target peak sits on the output voxel nearest the (flipped) lesion voxel / 2
        assert np.all(np.abs(peak - src / 2) <= 0.5 + 1e-9)
        assert sb[0, 0].numpy().max() == 3.0


def test_recall_threshold():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0] * 10)
    t = recall_threshold(scores, target_recall=0.9, floor=0.01)
    assert np.mean(scores >= t) >= 0.9 and t == pytest.approx(0.1)
    assert recall_threshold(np.zeros(5), floor=0.02) == 0.02
    assert recall_threshold(np.array([]), floor=0.03) == 0.03


def test_cosine_schedule():
    assert cosine_lr(1e-3, 0, 101) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 50, 101) == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))
    assert cosine_lr(1e-3, 100, 101) == pytest.approx(2e-5)
    lrs = [cosine_lr(1.0, s, 30) for s in range(30)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # the rate is a function of the step only (resume-safe); the last step runs at the final fraction
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 16)).astype(np.float32)
    vol = Stage1Volume(x, np.ones((16, 16, 16), bool), np.ones(3), np.array([[8.0, 8.0, 8.0]]), np.array([3.0]),
                       ["microbleed"])

    def run_whole():
        torch.manual_seed(0)
        net = CentreNet3D(2, base=4, depth=1)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        train_detector(net, [vol], steps=8, optimizer=opt, patch=16, batch=2, lr_schedule="cosine", log=lambda m: None)
        return net, opt

    a, opt_a = run_whole()
    assert opt_a.param_groups[0]["lr"] == pytest.approx(cosine_lr(1e-2, 7, 8))
    with pytest.raises(ValueError):
        train_detector(a, [vol], steps=1, optimizer=opt_a, patch=16, lr_schedule="step", log=lambda m: None)


def test_microbleed_auc_hand_values():
    p = np.array([0.9, 0.8, 0.3, 0.1])
    assert microbleed_auc(p, np.array([True, True, False, False])) == 1.0
    assert microbleed_auc(p, np.array([False, True, True, False])) == 0.5
    assert microbleed_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert np.isnan(microbleed_auc(p, np.zeros(4, bool)))


def test_validation_metrics_hand_values_and_no_candidates():
    """Figures come from the validation candidates only; with none, nothing is found (never the training set)."""
    from cmbdetect.models.train import validation_metrics

    mb, calc, vein = 0, 1, 2
    m = validation_metrics(np.array([0.9, 0.6, 0.2, 0.7, 0.8, 0.1]), np.array([mb, mb, mb, calc, vein, vein]),
                           stage1_recall=0.75, n_subjects=2, n_microbleeds=4)
    assert m["sensitivity_microbleed_at_p0.5"] == 0.5  # 2 of the 4 true microbleeds called (one never a candidate)
    assert m["fp_per_subject_at_p0.5"] == 1.0 and m["calcifications_called_microbleed"] == 1
    assert m["stage1_candidates_per_subject"] == 3.0 and m["stage1_recall_focal_lesions"] == 0.75
    assert abs(m["stage2_auc_microbleed_vs_rest"] - 5 / 9) < 1e-12  # pairs (mb > rest): 3 + 1 + 1 of 9
    none = validation_metrics(np.zeros(0), np.zeros(0, int), stage1_recall=0.0, n_subjects=18, n_microbleeds=163)
    assert none["sensitivity_microbleed_at_p0.5"] == 0.0 and none["fp_per_subject_at_p0.5"] == 0.0
    assert none["stage1_candidates_per_subject"] == 0.0 and none["calcifications_called_microbleed"] == 0
    assert np.isnan(none["stage2_auc_microbleed_vs_rest"])


def test_cli_train_options_and_bad_values():
    from cmbdetect.pipeline.cli import train as cli_train

    user = argparse.ArgumentParser()
    cli_train.add_parser(user.add_subparsers())
    for dev in (["--ablation", "bce-heatmap"], ["--augment"], ["--domain-close", "10"], ["--lr-schedule", "cosine"],
                ["--stage1-resolution-augment", "0.5"]):  # measured, not shipped: the developer entry point only
        with pytest.raises(SystemExit):
            user.parse_args(["train", "--bids-dir", "a", "--out", "m", *dev])
    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers(), developer=True)
    assert cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m", "--lr-schedule",
                                                          "cosine"])).lr_schedule == "cosine"
    args = parser.parse_args(["train", "--bids-dir", "a", "b", "--out", "m", "--ablation", "no-physics-channels",
                              "--steps", "5"])
    opts = cli_train.options_from_args(args)
    assert opts.channels == ("magnitude", "swi") and opts.stage1_steps == 5 and args.bids_dir == ["a", "b"]
    assert not opts.augment and opts.truth_copies == 1 and opts.stage2_tta and opts.heatmap_floor == 0.02
    for name in ("no-balancing", "bce-heatmap", "dice-bce-heatmap"):  # BCE heatmaps peak below the focal floor
        opts = cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m",
                                                              "--ablation", name]))
        assert opts.heatmap_floor == 1e-4 and opts.heatmap_loss in ("bce", "dice_bce")
    opts = cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m",
                                                          "--ablation", "uniform-patches"]))
    assert not opts.balanced and opts.heatmap_loss == "focal" and opts.class_weighting and opts.heatmap_floor == 0.02
    opts = cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m", "--augment"]))
    assert opts.augment and opts.truth_copies == 3 and opts.truth_jitter == 1.5
    assert opts.stage2_resolution_augment == 0.0
    opts = cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m",
                                                          "--stage2-resolution-augment", "0.5"]))
    assert opts.stage2_resolution_augment == 0.5
    with pytest.raises(InputError, match="resolution"):
        cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m",
                                                       "--stage2-resolution-augment", "1.5"]))
    assert opts.spacing_mm is None and opts.domain == "brain"
    opts = cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m", "--spacing",
                                                          "1,1,1.5", "--domain", "mask"]))
    assert opts.spacing_mm == (1.0, 1.0, 1.5) and opts.domain == "mask"
    for bad in ("1,1", "1,1,x", "0,1,1"):
        with pytest.raises(InputError, match="spacing"):
            cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m", "--spacing", bad]))
    with pytest.raises(InputError, match="members"):
        cli_train.run(parser.parse_args(["train", "--bids-dir", "a", "--out", "m", "--members", "0"]))
    args = parser.parse_args(["train", "--bids-dir", "a", "--out", "m", "--steps", "-1"])
    with pytest.raises(InputError):
        cli_train.options_from_args(args)
    opts = cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m"]))
    assert opts.classifier_centre == 2 and opts.domain_close_mm == 0.0 and opts.init_classifier
    opts = cli_train.options_from_args(parser.parse_args(
        ["train", "--bids-dir", "a", "--out", "m", "--init", "default", "--new-classifier", "--classifier-centre", "0",
         "--domain-close", "10"]))
    assert opts.classifier_centre == 0 and opts.domain_close_mm == 10.0 and not opts.init_classifier
    assert opts.max_candidates == 200 and opts.stage2_epochs == 20
    opts = cli_train.options_from_args(parser.parse_args(
        ["train", "--bids-dir", "a", "--out", "m", "--init", "default", "--epochs", "0", "--max-candidates", "1200"]))
    assert opts.stage2_epochs == 0 and opts.max_candidates == 1200 and opts.init_classifier
    assert opts.hard_negative_budget == 0
    opts = cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m",
                                                          "--hard-negative-budget", "1200"]))
    assert opts.hard_negative_budget == 1200
    for bad, match in ((["--new-classifier"], "needs --init"), (["--classifier-centre", "9"], "classifier-centre"),
                       (["--domain-close", "-1"], "domain-close"), (["--epochs", "0"], "recalibration"),
                       (["--epochs", "0", "--init", "default", "--new-classifier"], "recalibration"),
                       (["--epochs", "-1", "--init", "default"], "epochs"),
                       (["--max-candidates", "0"], "max-candidates"),
                       (["--hard-negative-budget", "-5"], "hard-negative-budget")):
        with pytest.raises(InputError, match=match):
            cli_train.options_from_args(parser.parse_args(["train", "--bids-dir", "a", "--out", "m", *bad]))


@pytest.mark.slow
def test_train_end_to_end_deterministic_and_resumable(tmp_path):
    """Tiny simulated BIDS set -> train twice with one seed (identical weights) -> detect with the result;
    a run stopped after its first checkpoint and resumed gives the same stage-1 weights."""
    from cmbdetect.models.inference import detect
    from cmbdetect.models.registry import load_model
    from cmbdetect.models.train import TrainOptions, train
    from cmbdetect.models.training_data import load_training_subjects
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    bids = tmp_path / "bids"
    simulate_dataset(bids, subjects=3, seed=5, shape=(48, 48, 32), voxel_size=(1.0, 1.0, 1.5), n_microbleeds=5,
                     echoes=1)
    opts = TrainOptions(stage1_steps=4, stage2_epochs=1, patch=24, batch=2)
    cache = tmp_path / "cache"
    a = load_model(train(bids, tmp_path / "a", options=opts, cache_dir=cache, log=lambda m: None))
    b = load_model(train(bids, tmp_path / "b", options=opts, cache_dir=cache, log=lambda m: None))
    for k, v in a.detector.state_dict().items():
        assert torch.equal(v, b.detector.state_dict()[k])
    assert a.metadata["thresholds"]["heatmap"] == b.metadata["thresholds"]["heatmap"]
    assert a.metadata["training"]["seed"] == 0 and not (tmp_path / "a" / "checkpoint.pt").exists()
    assert a.metadata["inference"]["domain"] == "brain" and "chi_available" in a.metadata["features"]["names"]
    # interrupted after stage 1 step 2 (checkpoint kept), then resumed to step 4: same weights as run a
    def crash(msg):
        if "threshold" in msg:
            raise KeyboardInterrupt

    short = TrainOptions(stage1_steps=2, stage2_epochs=1, patch=24, batch=2)
    with pytest.raises(KeyboardInterrupt):
        train(bids, tmp_path / "c", options=short, cache_dir=cache, log=crash)
    assert (tmp_path / "c" / "checkpoint.pt").exists()
    c = load_model(train(bids, tmp_path / "c", options=opts, cache_dir=cache, resume=True, log=lambda m: None))
    for k, v in a.detector.state_dict().items():
        assert torch.equal(v, c.detector.state_dict()[k])
    subj = load_training_subjects(bids, cache_dir=cache, log=lambda m: None)[0]
    dets = detect(subj.maps, model=a)
    assert all(d.label in ("microbleed", "calcification", "vein", "other") for d in dets)


def test_zero_epochs_recalibrates_the_init_classifier_on_a_new_budget(tmp_path):
    """``--epochs 0 --init M --max-candidates N``: the networks are M's bit for bit, the class weights its
    classifier was trained with are kept, and the calibration and stacking are re-fitted on the validation
    candidates of the new budget, which the model then uses; without an init model it is refused."""
    from cmbdetect.models.registry import load_model
    from cmbdetect.models.train import TrainOptions, train
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    bids = tmp_path / "bids"
    simulate_dataset(bids, subjects=3, seed=5, shape=(48, 48, 32), voxel_size=(1.0, 1.0, 1.5), n_microbleeds=5,
                     echoes=1)
    cache, quiet = tmp_path / "cache", (lambda m: None)
    base = load_model(train(bids, tmp_path / "a", options=TrainOptions(stage1_steps=4, stage2_epochs=1, patch=24,
                                                                        batch=2, max_candidates=3,
                                                                        heatmap_floor=1e-6),
                            cache_dir=cache, log=quiet))
    opts = TrainOptions(stage1_steps=0, stage2_epochs=0, patch=24, batch=2, max_candidates=40, heatmap_floor=1e-6)
    re = load_model(train(bids, tmp_path / "b", options=opts, init=str(tmp_path / "a"), cache_dir=cache, log=quiet))
    for a, b in ((base.detector, re.detector), (base.classifier, re.classifier)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert re.metadata["calibration"]["class_weights"] == base.metadata["calibration"]["class_weights"]
    assert re.metadata["thresholds"]["max_candidates"] == 40 and base.metadata["thresholds"]["max_candidates"] == 3
    per_subject = re.metadata["metrics"]["stage1_candidates_per_subject"]
    assert 3 < per_subject <= 40 and base.metadata["metrics"]["stage1_candidates_per_subject"] <= 3
    assert re.metadata["calibration"]["temperature"] != base.metadata["calibration"]["temperature"]
    with pytest.raises(InputError, match="--init"):
        train(bids, tmp_path / "c", options=opts, cache_dir=cache, log=quiet)


def test_mined_candidates_add_a_seeded_draw_from_the_lower_ranks(monkeypatch):
    """Hard negatives for stage 2: the best ``max_hard_negatives`` candidates, plus (with a larger
    ``hard_negative_budget``) as many drawn without replacement from the ranks below them, the same for a seed."""
    import cmbdetect.models.train as train_mod
    from cmbdetect.models.train import TrainOptions, mined_candidates

    calls = []

    def fake(det, vol, *, threshold, min_distance_mm, max_candidates, flips):
        calls.append(max_candidates)
        n = min(max_candidates, 300)  # the volume has 300 peaks, best first
        return np.arange(n, dtype=float)[:, None].repeat(3, axis=1), np.linspace(1, 0, n), np.ones(n)

    monkeypatch.setattr(train_mod, "volume_candidates", fake)
    top = mined_candidates(None, None, threshold=0.1, opts=TrainOptions(), flips=((),), subject_index=3)
    assert calls == [48] and np.array_equal(top[:, 0], np.arange(48))
    opts = TrainOptions(hard_negative_budget=1200)
    a = mined_candidates(None, None, threshold=0.1, opts=opts, flips=((),), subject_index=3)[:, 0]
    b = mined_candidates(None, None, threshold=0.1, opts=opts, flips=((),), subject_index=3)[:, 0]
    c = mined_candidates(None, None, threshold=0.1, opts=opts, flips=((),), subject_index=4)[:, 0]
    assert calls[1:] == [1200, 1200, 1200] and np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 96 and np.array_equal(a[:48], np.arange(48)) and len(set(a[48:])) == 48
    assert a[48:].min() >= 48 and a[48:].max() < 300 and np.all(np.diff(a[48:]) > 0)
    few = mined_candidates(None, None, threshold=0.1, opts=replace(opts, hard_negative_budget=60), flips=((),),
                           subject_index=3)[:, 0]  # only 12 below the top: all of them
    assert np.array_equal(few, np.arange(60))


def test_map_cache_is_tied_to_the_physics_code(tmp_path, monkeypatch):
    """A cached subject is reused only when it was made by the same physics code."""
    from cmbdetect.models import training_data as td
    from cmbdetect.physics.maps import PhysicsMaps

    z = np.zeros((4, 4, 4), np.float32)
    maps = PhysicsMaps(mask=z > -1, magnitude=z, field_ppm=z, local_field_ppm=z, chi_ppm=z, chi_pos=z, chi_neg=z,
                       swi=z, mip=z, affine=np.eye(4), b0=3.0)
    subj = td.TrainingSubject("x", maps, np.zeros((0, 3)), [], np.zeros(0), None)
    path = tmp_path / "x.npz"
    td._save_cache(path, subj)
    assert td._cache_is_current(path)
    assert td._load_cache(path, "x").maps.b0 == 3.0
    monkeypatch.setattr(td, "_physics_code", lambda: "0123456789abcdef")
    assert not td._cache_is_current(path)


@pytest.mark.slow
def test_cli_trains_an_ensemble_and_fine_tunes_from_it(tmp_path):
    """cmbdetect train --members 2: two members with seeds 0 and 1 plus the ensemble metadata; --resume keeps
    finished members; --init ENSEMBLE fine-tunes each member from the matching member."""
    from cmbdetect.models.registry import load_model
    from cmbdetect.pipeline.cli import train as cli_train
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    bids = tmp_path / "bids"
    simulate_dataset(bids, subjects=3, seed=5, shape=(48, 48, 32), voxel_size=(1.0, 1.0, 1.5), n_microbleeds=5,
                     echoes=1)
    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    common = ["train", "--bids-dir", str(bids), "--cache-dir", str(tmp_path / "cache"), "--steps", "2",
              "--epochs", "1"]
    assert cli_train.run(parser.parse_args(common + ["--out", str(tmp_path / "ens"), "--members", "2"])) == 0
    ens = load_model(tmp_path / "ens")
    assert [p.metadata["training"]["seed"] for p in ens.parts] == [0, 1]
    assert ens.metadata["training"]["seeds"] == [0, 1]
    assert cli_train.run(parser.parse_args(common + ["--out", str(tmp_path / "ens"), "--members", "2",
                                                     "--resume"])) == 0  # finished members are kept
    assert [p.sha256 for p in load_model(tmp_path / "ens").parts] == [p.sha256 for p in ens.parts]
    assert cli_train.run(parser.parse_args(common + ["--out", str(tmp_path / "ft"), "--init",
                                                     str(tmp_path / "ens")])) == 0
    ft = load_model(tmp_path / "ft")
    assert ft.metadata["training"]["init"] == str(tmp_path / "ens") and not ft.members


def test_model_spacing_is_the_option_or_the_training_median():
    """The model grid is ``TrainOptions.spacing_mm`` when given, else the median voxel size of the subjects;
    new models record the detection domain."""
    from types import SimpleNamespace

    from cmbdetect.models.train import TrainOptions, _new_metadata

    subs = [SimpleNamespace(maps=SimpleNamespace(affine=np.diag([d, d, dz, 1.0])))
            for d, dz in ((1.0, 1.5), (0.75, 2.5), (0.8, 2.5))]
    assert _new_metadata(subs, TrainOptions())["spacing"] == [0.8, 0.8, 2.5]
    assert _new_metadata(subs, TrainOptions(spacing_mm=(1.0, 1.0, 1.5)))["spacing"] == [1.0, 1.0, 1.5]


@pytest.mark.slow
def test_train_without_validation_candidates_reports_nothing_found(tmp_path, monkeypatch):
    """A stage 1 that finds nothing (a heatmap below the floor everywhere) gives validation sensitivity 0, not
    figures of the training examples that calibration falls back to."""
    import json

    import cmbdetect.models.train as train_mod
    from cmbdetect.models.train import TrainOptions, train
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    bids = tmp_path / "bids"
    simulate_dataset(bids, subjects=3, seed=5, shape=(48, 48, 32), voxel_size=(1.0, 1.0, 1.5), n_microbleeds=5,
                     echoes=1)
    monkeypatch.setattr(train_mod, "volume_candidates", lambda *a, **k: (np.zeros((0, 3)), np.zeros(0), np.zeros(0)))
    out = train(bids, tmp_path / "m", options=TrainOptions(stage1_steps=2, stage2_epochs=1, patch=24, batch=2),
                cache_dir=tmp_path / "cache", log=lambda m: None)
    m = json.loads((out / "metadata.json").read_text())["metrics"]
    assert m["stage1_recall_focal_lesions"] == 0.0 and m["stage1_candidates_per_subject"] == 0.0
    assert m["sensitivity_microbleed_at_p0.5"] == 0.0 and m["fp_per_subject_at_p0.5"] == 0.0
