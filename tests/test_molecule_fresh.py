"""molecule/fresh: the roles on fresh Debian 12 and Debian 13 hosts, MariaDB and PostgreSQL.

Slow (minutes): builds the two images when missing (scripts/build-images, from Debian's
packages), then runs `molecule test -s fresh`: three podman containers (Debian 12 with MariaDB,
Debian 13 with each database), prepared as iRedMail hosts, converged, converged again (idempotence), verified.
Needs root and a podman that runs containers here (scripts/podman-setup, which
scripts/setup-dev-machine runs). In CI a podman that cannot run them fails the test; elsewhere it skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import yaml
from conftest import IN_CI, need_service
from testbed import ansible_failures

# Containers only: its own lane, beside the tests that provision this machine (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("containers")

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "molecule" / "fresh"
RELEASES = ("debian12", "debian13")
#: CI's whole run must stay under 30 minutes; the scenario takes six to nine here.
MOLECULE_TIMEOUT = 1500


def podman_problem() -> str | None:
    """Why podman cannot run the scenario's containers here, or None when it can."""
    if os.geteuid() != 0:
        return "molecule/fresh runs podman as root: run the tests as root"
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/podman-setup installs it)"
    info = subprocess.run(
        ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True, text=True, check=False
    )
    if info.returncode != 0:
        return f"podman info failed: {info.stderr.strip()}"
    if info.stdout.strip() != "runc":
        return f"podman uses runtime {info.stdout.strip()!r}, not runc (scripts/podman-setup configures it)"
    return None


@pytest.fixture(scope="module")
def images() -> dict[str, float]:
    """Both images, built unless cached; returns how long each took (the build's own timing)."""
    problem = podman_problem()
    if problem is not None:
        need_service(problem)
    started = time.monotonic()
    build = subprocess.run(
        [str(REPO / "scripts" / "build-images"), *RELEASES], capture_output=True, text=True, check=False, timeout=900
    )
    print(build.stdout, build.stderr, f"build-images: {time.monotonic() - started:.0f} s", sep="\n")
    if build.returncode != 0:
        # debootstrap reaches the Debian mirror apt uses; without it there is nothing to test.
        need_service(f"scripts/build-images failed ({build.returncode}): {build.stderr.strip()[-2000:]}")
    run = subprocess.run(["podman", "run", "--rm", "--init", "f2bsql/debian12", "true"], capture_output=True, text=True)
    if run.returncode != 0:
        need_service(f"podman cannot run a container here: {run.stderr.strip()}")
    timings = {}
    for line in build.stdout.splitlines():
        match = re.match(r"f2bsql/(\S+) (built|cached)\b(?:.*, (\d+) s\))?", line)
        if match:
            timings[match[1]] = float(match[3] or 0)
    assert sorted(timings) == sorted(RELEASES), build.stdout
    return timings


def platforms(scenario: str = "fresh", env: dict[str, str] | None = None) -> list[str]:
    """The platforms' names, with molecule.yml's ${VAR:-default} filled in from env."""
    config = yaml.safe_load((REPO / "molecule" / scenario / "molecule.yml").read_text())
    values = os.environ if env is None else env

    def fill(match: re.Match[str]) -> str:
        return values.get(match[1]) or match[2]

    return [re.sub(r"\$\{(\w+):-([^}]*)\}", fill, platform["name"]) for platform in config["platforms"]]


def test_scenario_covers_both_releases_and_backends() -> None:
    # Each release in a container, each database server in a container, and Debian 13 (fail2ban
    # 1.1) as an iRedMail host with its integration on both (molecule/fresh/molecule.yml).
    names = platforms()
    assert {name.split("-")[1] for name in names} >= set(RELEASES)
    assert {name.split("-")[2] for name in names} >= {"mariadb", "postgresql"}
    config = yaml.safe_load((REPO / "molecule" / "fresh" / "molecule.yml").read_text(encoding="utf-8"))
    host_vars = config["provisioner"]["inventory"]["host_vars"]
    assert {
        name.split("-")[2]
        for name in names
        if name.split("-")[1] == "debian13" and host_vars[name]["f2bsql_molecule_integration"]
    } == {"mariadb", "postgresql"}


def run_scenario(scenario: str, tmp_path: Path, **extra_env: str) -> tuple[str, float]:
    """`molecule test -s <scenario>`, asserted to pass: check, converge, idempotence and verify,
    each host in every play recap. Returns the log and the seconds it took."""
    env = dict(os.environ)
    # molecule calls ansible-playbook and ansible-config by name: this venv's, not another.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(NO_COLOR="1", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0", **extra_env)
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "molecule.log"
    started = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                ["molecule", "test", "-s", scenario],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=MOLECULE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            subprocess.run(["molecule", "destroy", "-s", scenario], cwd=REPO, env=env, capture_output=True, check=False)
            pytest.fail(f"molecule test -s {scenario} took over {MOLECULE_TIMEOUT} s; log: {log}")
    elapsed = time.monotonic() - started
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, f"molecule test -s {scenario} failed ({proc.returncode}):\n{ansible_failures(output)}"
    # Every platform reached the verify step, and the idempotence step found nothing to change.
    recaps = re.findall(r"^\W*(f2bsql-\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", output, re.M)
    for name in platforms(scenario, env):
        assert sum(1 for host, _ in recaps if host == name) >= 4, f"{name} missing from a play recap"
    for step in ("check", "idempotence", "verify"):
        assert re.search(rf"{step}.*Executed: Successful", output), f"no successful {step} step:\n{output[-5000:]}"
    return output, elapsed


def test_the_fleets_prepared_images_hold_what_its_prepare_step_installs() -> None:
    """scripts/build-images' prepared images and molecule/fleet/prepare.yml name the same packages
    (a package only prepare.yml names would be installed on every run, unseen)."""
    script = (REPO / "scripts" / "build-images").read_text()
    images = dict(re.findall(r'\[(debian12-[a-z-]+)\]="debian12 ([^"]+)"', script))
    plays = yaml.safe_load((REPO / "molecule" / "fleet" / "prepare.yml").read_text())
    db, mail = (play["vars"]["fleet_packages"] for play in plays[:2])
    assert {name: packages.split() for name, packages in images.items()} == {
        "debian12-mail": mail,
        "debian12-db-mysql": db["mysql"],
        "debian12-db-pgsql": db["pgsql"],
    }
    platforms = yaml.safe_load((REPO / "molecule" / "fleet" / "molecule.yml").read_text())["platforms"]
    assert {platform["build_image"].replace("${F2BSQL_FLEET_BACKEND:-mysql}", "mysql") for platform in platforms} == {
        "debian12-mail",
        "debian12-db-mysql",
    }


@pytest.mark.slow
def test_molecule_fresh(images: dict[str, float], tmp_path: Path) -> None:
    """`molecule test -s fresh` passes on every platform: check, converge, idempotence, verify."""
    _, elapsed = run_scenario("fresh", tmp_path)
    print(f"images: {images}; molecule test -s fresh: {elapsed:.0f} s{' (CI)' if IN_CI else ''}")


@pytest.mark.slow
def test_molecule_fleet(images: dict[str, float], tmp_path: Path) -> None:
    """`molecule test -s fleet`, MariaDB and PostgreSQL at once (each its own containers, network
    and ephemeral directory): a database server and two mail hosts on one podman network,
    converged by site.yml; molecule/fleet/verify.yml proves the fleet's promise (its header)."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            backend: pool.submit(
                run_scenario,
                "fleet",
                tmp_path / backend,
                F2BSQL_FLEET_BACKEND=backend,
                MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / backend / "ephemeral"),
            )
            for backend in ("mysql", "pgsql")
        }
        # Both finish (a failure of one does not leave the other's containers running).
        wait(runs.values())
    elapsed = {backend: run.result()[1] for backend, run in runs.items()}
    print(
        f"molecule test -s fleet: MariaDB {elapsed['mysql']:.0f} s, PostgreSQL {elapsed['pgsql']:.0f} s,"
        f" both at once {time.monotonic() - started:.0f} s{' (CI)' if IN_CI else ''}"
    )
