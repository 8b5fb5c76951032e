"""rdp_synthetic --sae_paths: SAE folders of one name under different parents (out/<hook>/<sae>/ of a
multi-hook run) get distinct release names, so each writes its own result file."""

from sae_rdp_plugin.evals.rdp_synthetic.main import release_names


def test_unique_folder_names_are_kept(tmp_path):
    assert release_names([str(tmp_path / "a"), str(tmp_path / "b")]) == ["a", "b"]


def test_shared_folder_names_get_their_parent(tmp_path):
    paths = [
        str(tmp_path / "blocks.1.hook_resid_post" / "topk-d64"),
        str(tmp_path / "blocks.2.hook_resid_post" / "topk-d64"),
    ]
    names = release_names(paths)
    assert names == ["blocks.1.hook_resid_post__topk-d64", "blocks.2.hook_resid_post__topk-d64"]
    assert len(set(names)) == 2
