"""SMILES syntax as a token mask: which next tokens keep each row a possible complete SMILES.

Used to constrain sampling (`genlab sample/evaluate --smiles-syntax`): before each token is
drawn, the tokens that would break SMILES's grammar get probability 0 and the rest are
renormalised, so every finished row parses as far as syntax goes. What it enforces, per row:
a molecule starts with an atom; a bond is followed by an atom (or, after an atom, by a ring
bond digit, as in C=1CCCCC1); a branch "(" follows an atom, ring digit or ")" and starts with
a bond or an atom; ")" closes an open branch and never follows "(" or a bond; ring digits
follow an atom (or its ring digits) and never close a ring on the atom that opened it nor on
the atom it is bonded to already; a ring is closed without a bond symbol (its bond order is the
one written where it opened); "." separates molecules outside any branch; the end token "\\n"
comes only after an atom, ring digit or ")" with every branch and ring closed.
Chemistry is not checked (valence, aromaticity): a syntactically complete SMILES can still be
rejected by RDKit, and the validity metric still counts those.

The state is a few integers per row, updated with tensor operations (no per-row Python).
"""

from __future__ import annotations

import re

import torch

from genlab.errors import ConfigError

# token classes
ATOM, BOND, OPEN, CLOSE, RING, DOT, SEP_, COND, OTHER = range(9)
# row states: the class of the last token, with a bond split by what it follows
S_START, S_BEGUN, S_ATOM, S_BOND_ATOM, S_BOND_OTHER, S_OPEN, S_CLOSE, S_RING, S_DOT = range(9)
# which classes may follow each state (CLOSE, SEP and RING get per-row conditions on top)
FOLLOWS = {
    S_START: {ATOM, COND},  # nothing yet: an atom, or a conditioned run's property-bin token
    S_BEGUN: {ATOM},  # after the bin token
    S_ATOM: {ATOM, BOND, OPEN, CLOSE, RING, DOT, SEP_},
    S_BOND_ATOM: {ATOM, RING},  # C=1 ... 1 closes the ring with a double bond
    S_BOND_OTHER: {ATOM},  # (= or )= : a branch's or the chain's next atom
    S_OPEN: {ATOM, BOND},
    S_CLOSE: {ATOM, BOND, OPEN, CLOSE, DOT, SEP_},
    S_RING: {ATOM, BOND, OPEN, CLOSE, RING, DOT, SEP_},
    S_DOT: {ATOM},
}


MAX_DEPTH = 32  # branches open at once


def starts_molecule(state: torch.Tensor) -> torch.Tensor:
    """Rows whose next atom starts a molecule (bonded to nothing)."""
    return (state == S_DOT) | (state == S_START) | (state == S_BEGUN)


def token_class(tok: str) -> int:
    from genlab.data.molecule_condition import is_condition_token

    if tok == "\n":
        return SEP_
    if is_condition_token(tok):
        return COND
    if tok.startswith("[") or tok in ("Br", "Cl", "*") or re.fullmatch(r"[BCNOPSFIbcnops]", tok):
        return ATOM
    if tok in "=#$:/\\-~" and len(tok) == 1:
        return BOND
    if tok == "(":
        return OPEN
    if tok == ")":
        return CLOSE
    if re.fullmatch(r"\d|%\d\d", tok):
        return RING
    if tok == ".":
        return DOT
    return OTHER  # "+", "@" outside brackets: never valid


def check_tokenizer(tokenizer) -> None:
    """ConfigError unless the run writes SMILES token by token."""
    kind = getattr(tokenizer, "kind", None)
    if kind == "selfies":
        raise ConfigError("--smiles-syntax is for SMILES runs; every SELFIES string is a valid molecule already")
    if kind != "smiles":
        raise ConfigError("--smiles-syntax is for runs that write SMILES token by token (GPT, LSTM, SMILES VAE); "
                          "a graph generator builds its molecules atom by atom")


class SmilesSyntax:
    """The grammar state of B rows being sampled with `tokenizer` (a SMILES MoleculeTokenizer),
    all starting at a molecule's beginning. `mask()` -> (B, V) bool of allowed next tokens;
    `update(tok)` with the drawn tokens (B,) or (B, 1)."""

    def __init__(self, tokenizer, rows: int, device: torch.device | str = "cpu"):
        check_tokenizer(tokenizer)
        classes = torch.tensor([token_class(t) for t in tokenizer.tokens], device=device)
        self.cls = classes
        self.table = torch.stack([torch.isin(classes, torch.tensor(sorted(FOLLOWS[s]), device=device))
                                  for s in range(len(FOLLOWS))])  # (states, V)
        self.ring_ids = (classes == RING).nonzero()[:, 0]  # (R,)
        self.ring_of = torch.full_like(classes, -1)
        self.ring_of[self.ring_ids] = torch.arange(len(self.ring_ids), device=device)
        self.close_ids = (classes == CLOSE).nonzero()[:, 0]
        self.sep_ids = (classes == SEP_).nonzero()[:, 0]
        self.open_ids = (classes == OPEN).nonzero()[:, 0]
        self.dot_ids = (classes == DOT).nonzero()[:, 0]
        B, R = rows, len(self.ring_ids)
        self.state = torch.full((B,), S_START, dtype=torch.long, device=device)
        self.depth = torch.zeros(B, dtype=torch.long, device=device)  # open branches
        self.atoms = torch.zeros(B, dtype=torch.long, device=device)  # atoms so far
        self.cur = torch.full((B,), -1, dtype=torch.long, device=device)  # the atom a next atom bonds to
        self.parent = torch.full((B,), -1, dtype=torch.long, device=device)  # the atom cur is bonded to
        self.stack = torch.full((B, MAX_DEPTH), -1, dtype=torch.long, device=device)  # branch anchors
        self.opened_at = torch.full((B, R), -1, dtype=torch.long, device=device)  # ring label -> atom, -1 = closed
        self.opened_bond = torch.zeros((B, R), dtype=torch.bool, device=device)  # opened with a bond symbol
        self.partners = torch.full((B, R), -1, dtype=torch.long, device=device)  # atoms cur closed rings with

    def reset(self, rows: torch.Tensor) -> None:
        """Start the rows where `rows` (B,) is True over, at a molecule's beginning (as __init__
        leaves every row; opened_bond is rewritten whenever a label opens)."""
        self.state[rows], self.depth[rows], self.atoms[rows] = S_START, 0, 0
        self.cur[rows], self.parent[rows], self.stack[rows], self.opened_at[rows] = -1, -1, -1, -1
        self.partners[rows] = -1

    def mask(self) -> torch.Tensor:
        m = self.table[self.state].clone()  # (B, V)
        m[:, self.close_ids] &= (self.depth > 0)[:, None]
        m[:, self.open_ids] &= (self.depth < MAX_DEPTH)[:, None]
        m[:, self.dot_ids] &= (self.depth == 0)[:, None]
        m[:, self.sep_ids] &= ((self.depth == 0) & (self.opened_at < 0).all(1))[:, None]
        is_open = self.opened_at >= 0  # (B, R)
        bonded = (self.opened_at[:, :, None] == self.partners[:, None, :]).any(-1)  # (B, R): a second ring bond
        closable = (is_open & (self.opened_at != self.cur[:, None]) & (self.opened_at != self.parent[:, None])
                    & ~bonded)
        after_bond = (self.state == S_BOND_ATOM)[:, None]
        # a label opens anywhere a ring digit may come, and closes on another, unbonded atom
        # (after a bond symbol only if none was written where it opened)
        m[:, self.ring_ids] &= ~is_open | (closable & ~(after_bond & self.opened_bond))
        return m

    def update(self, tok: torch.Tensor) -> None:
        tok = tok.reshape(-1)
        c = self.cls[tok]
        after_atomish = (self.state == S_ATOM) | (self.state == S_RING)
        new = torch.full_like(self.state, -1)
        for k, s in ((ATOM, S_ATOM), (OPEN, S_OPEN), (CLOSE, S_CLOSE), (RING, S_RING), (DOT, S_DOT),
                     (COND, S_BEGUN), (SEP_, S_START)):
            new = torch.where(c == k, s, new)
        new = torch.where(c == BOND, torch.where(after_atomish, S_BOND_ATOM, S_BOND_OTHER), new)
        ar = torch.arange(len(tok), device=tok.device)
        # branches: "(" remembers the atom it hangs from, ")" goes back to it
        opening, closing = c == OPEN, c == CLOSE
        self.stack[ar, self.depth.clamp(max=MAX_DEPTH - 1)] = torch.where(
            opening, self.cur, self.stack[ar, self.depth.clamp(max=MAX_DEPTH - 1)])
        self.depth = self.depth + opening.long() - closing.long()
        back = self.stack[ar, self.depth.clamp(min=0, max=MAX_DEPTH - 1)]
        self.cur = torch.where(closing, back, self.cur)
        self.parent = torch.where(closing, -1, self.parent)  # not used after ")": no ring digit may follow
        # atoms: a new atom is bonded to cur (none after "." or at the start)
        atom = c == ATOM
        self.parent = torch.where(atom, torch.where(starts_molecule(self.state), -1, self.cur), self.parent)
        self.cur = torch.where(atom, self.atoms, self.cur)
        self.atoms = self.atoms + atom.long()
        self.partners[atom] = -1
        # ring digits: open the label at cur, or close it
        r = self.ring_of[tok]  # (B,) ring label index or -1
        rows = (r >= 0).nonzero()[:, 0]
        if len(rows):
            was = self.opened_at[rows, r[rows]]
            self.opened_at[rows, r[rows]] = torch.where(was >= 0, -1, self.cur[rows])
            # closing: the atom the ring bonds cur to (a label reopened at cur keeps that record)
            self.partners[rows, r[rows]] = torch.where(was >= 0, was, self.partners[rows, r[rows]])
            self.opened_bond[rows, r[rows]] = self.state[rows] == S_BOND_ATOM
        self.state = torch.where(new >= 0, new, self.state)
        ended = c == SEP_  # a finished row starts over (its later tokens are not used)
        if bool(ended.any()):
            self.reset(ended)
