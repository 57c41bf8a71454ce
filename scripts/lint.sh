#!/usr/bin/env bash
# Run every developer check the way CI does, on the whole tree, and fail on any finding.
#
#   bash scripts/lint.sh            # all checks
#   bash scripts/lint.sh ruff mypy  # only the named ones
#
# Checks: ruff (lint), format (ruff format --check), codespell, mypy, clang-format (cuda_ext/csrc and
# cpu_ext/csrc),
# docs (mkdocs build --strict). Their rules live in pyproject.toml, .clang-format and mkdocs.yml;
# .pre-commit-config.yaml runs the same tools on the files of a commit. Tools come from the
# checkout's .venv (the test extra installs them) or else from PATH; nothing is downloaded.
# Fixes: `ruff check --fix .`, `ruff format .`, `clang-format -i cuda_ext/csrc/*.cu* cpu_ext/csrc/*`.
set -uo pipefail
export NO_MKDOCS_2_WARNING=1  # no Material banner in the output
cd "$(dirname "$0")/.."
if [[ -d .venv/bin ]]; then
  export PATH="$PWD/.venv/bin:$PATH"
fi

ALL=(ruff format codespell mypy clang-format docs)
if [[ $# -gt 0 ]]; then CHECKS=("$@"); else CHECKS=("${ALL[@]}"); fi

run_check() {
  case "$1" in
    ruff) ruff check --no-fix . ;;
    format) ruff format --check . ;;
    codespell)  # word list and skipped paths: [tool.codespell] in pyproject.toml
      if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # the files git knows or would add (tracked + untracked, minus ignored ones)
        git ls-files -z --cached --others --exclude-standard |
          xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh |
          xargs -0 codespell
      else
        codespell
      fi ;;
    mypy) mypy ;;            # the checked modules: [tool.mypy] files in pyproject.toml
    clang-format)
      local sources
      mapfile -t sources < <(git ls-files --cached --others --exclude-standard \
        'cuda_ext/csrc/*.cu' 'cuda_ext/csrc/*.cuh' 'cuda_ext/csrc/*.cc' 'cuda_ext/csrc/*.h' \
        'cpu_ext/csrc/*.cc' 'cpu_ext/csrc/*.h' \
        2>/dev/null || ls cuda_ext/csrc/*.cu* cpu_ext/csrc/*)
      [[ ${#sources[@]} -eq 0 ]] || clang-format --dry-run -Werror "${sources[@]}" ;;
    docs)
      local site rc
      site=$(mktemp -d)
      mkdocs build --strict --quiet --site-dir "$site"
      rc=$?
      rm -rf "$site"
      return $rc ;;
    *)
      echo "unknown check '$1'; choose from: ${ALL[*]}" >&2
      return 2 ;;
  esac
}

failed=()
for check in "${CHECKS[@]}"; do
  echo "==> $check"
  if ! run_check "$check"; then
    failed+=("$check")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "lint: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed (${CHECKS[*]})"
