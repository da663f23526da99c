"""Shell completion scripts (bash, zsh) generated from the CLI's argparse parser, so that they
list exactly the commands and options the parser knows: `eval "$(genlab completion bash)"`.

Completes subcommands, each subcommand's options, the values of options with choices, preset
names (and YAML files) for `train`, and directories or files for paths.
"""

from __future__ import annotations

import argparse

# options and positionals (by dest) whose values are folders; other path-like ones complete files
_DIRS = {"run_dir", "run_dirs", "resume", "data_root", "reference"}
_FILES = {"config", "out", "input", "mask", "inception_weights"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _words(*groups) -> str:
    return " ".join(w for g in groups for w in g)


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion function `_genlab` for `parser`, registered for the command `genlab`."""
    from genlab.presets import PRESETS

    subs = _subparsers(parser)
    top = [o for a in parser._actions for o in a.option_strings]
    cases, values = [], []
    for name, sp in subs.items():
        free = []  # options taking a number or free text: nothing to offer
        opts = [o for a in sp._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
        pos = [a for a in sp._actions if not a.option_strings]
        words = [w for a in pos for w in (a.choices or [])] + (list(PRESETS) if name == "train" else [])
        mode = "-d" if any(a.dest in _DIRS for a in pos) else "-f" if any(a.dest in _FILES for a in pos) else ""
        cases.append(f'        {name}) opts="{_words(opts)}"; words="{_words(words)}"; mode="{mode}";;')
        for a in sp._actions:
            if not a.option_strings or a.nargs == 0:
                continue
            flags = "|".join(f"{name}:{o}" for o in a.option_strings)
            if a.choices:
                values.append(f'        {flags}) COMPREPLY=($(compgen -W "{_words(a.choices)}" -- "$cur")); return;;')
            elif a.dest in _DIRS or a.dest in _FILES:
                kind = "-d" if a.dest in _DIRS else "-f"
                values.append(f'        {flags}) COMPREPLY=($(compgen {kind} -- "$cur")); return;;')
            else:
                free.append(flags)
        if free:
            values.append(f'        {"|".join(free)}) COMPREPLY=(); return;;')
    nl = "\n"
    return f"""# genlab bash completion, generated from its argument parser: eval "$(genlab completion bash)"
_genlab() {{
    local cur prev cmd i opts words mode
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break;; esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{_words(subs, top)}" -- "$cur")); return
    fi
    case "$cmd:$prev" in
{nl.join(values)}
    esac
    case "$cmd" in
{nl.join(cases)}
        *) return;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        [[ -n "$mode" ]] && COMPREPLY+=($(compgen $mode -- "$cur"))
    fi
}}
complete -o filenames -F _genlab genlab
"""


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` (bash or zsh; zsh runs the bash one through bashcompinit)."""
    if shell == "bash":
        return bash_script(parser)
    if shell == "zsh":
        head = "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n"
        return head + bash_script(parser)
    from genlab.errors import ConfigError

    raise ConfigError(f"no completion for shell {shell!r}; choose bash or zsh")
