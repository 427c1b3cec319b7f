"""One serialisation of PhysicsMaps: the array names are the dataclass fields; bundle and NIfTI folder round trips."""
from __future__ import annotations

from dataclasses import fields

import numpy as np

from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.io.maps import (MAP_ARRAYS, MAP_FILES, load_maps_bundle, load_maps_meta,
                                        read_physics_maps, save_maps_bundle, write_physics_maps)


def _maps(affine, shape=(6, 7, 5)):
    rng = np.random.default_rng(3)
    vol = {name: rng.normal(size=shape).astype(np.float32)
           for name in ("magnitude", "field_ppm", "local_field_ppm", "chi_ppm", "chi_pos", "chi_neg", "swi", "mip")}
    return PhysicsMaps(mask=rng.random(shape) > 0.3, affine=affine, b0=3.0, meta={"unwrap": "laplacian"}, **vol)


def test_names_are_the_dataclass_fields():
    arrays = [f.name for f in fields(PhysicsMaps) if f.name not in ("affine", "b0", "meta")]
    assert list(MAP_ARRAYS) == arrays
    assert set(MAP_FILES) <= set(MAP_ARRAYS)


def test_bundle_and_folder_round_trip(tmp_path, oblique_affine):
    maps = _maps(oblique_affine((6, 7, 5)))
    path = save_maps_bundle(maps, tmp_path / "maps.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz"]  # written atomically, nothing left beside
    back = load_maps_bundle(str(path))
    assert load_maps_meta(str(path)) == {"unwrap": "laplacian"} and back.r2star is None and back.b0 == 3.0
    for name in MAP_ARRAYS:
        if getattr(maps, name) is not None:
            np.testing.assert_array_equal(getattr(back, name), getattr(maps, name))
    again = read_physics_maps(tmp_path / "folder") if write_physics_maps(maps, tmp_path / "folder") else None
    np.testing.assert_allclose(again.chi_ppm, maps.chi_ppm)
    np.testing.assert_array_equal(again.mask, maps.mask)
