"""The push block of ``[workspace] git = "ro"``: the box's system gitconfig."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coopy.gitguard import MESSAGE, build_system_gitconfig, push_urls, refusing_url


@pytest.mark.parametrize(
    ("config", "urls"),
    [
        ('[remote "origin"]\n\turl = a\n\tpushurl = ssh://h/x\n', ["ssh://h/x"]),
        ('[remote "o"]\n\tpushURL = "git@h:x"\n[remote "p"]\n pushurl=b\n', ["git@h:x", "b"]),
        ('[remote "origin"]\n\turl = a\n', []),
    ],
)
def test_push_urls(config: str, urls: list[str]) -> None:
    assert push_urls(config) == urls


def test_refusing_url_escapes_for_ext() -> None:
    url = refusing_url("100% sure")
    assert url == "ext::sh -c echo% '100%%% sure'% >&2;% exit% 1 "


def test_system_gitconfig_keeps_the_hosts_and_git_reads_it(tmp_path: Path) -> None:
    text = build_system_gitconfig("[core]\n\tpager = less\n", ["ssh://h/x", "ssh://h/x"])
    (tmp_path / "gitconfig").write_text(text)
    got = subprocess.run(["git", "config", "--file", str(tmp_path / "gitconfig"), "--list"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert got == [
        "core.pager=less",
        "protocol.ext.allow=user",
        f"url.{refusing_url()}.pushinsteadof=",
        f"url.{refusing_url()}.insteadof=ssh://h/x",
    ]
    assert MESSAGE in text.replace("% ", " ").replace('\\"', '"')
