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
For a run that writes Kekule SMILES (data.kekulize: no aromatic atoms, every bond order written)
the mask also keeps each atom within its valence: a bond, branch, ring bond or next atom is allowed
only where both of its atoms have room for its order (C 4, N 3, O 2, S 6, halogens 1; a bracket
atom by its charge and hydrogens, as RDKit counts them), and it avoids the dead ends that would
follow (an atom left without room while a ring is still open). A row whose every token would break
a valence falls back to the grammar alone. Aromatic SMILES are not checked (an aromatic ring's
valid bonds depend on the whole ring): a syntactically complete SMILES can still be rejected by
RDKit, and the validity metric counts those.

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
MAX_ATOMS = 256  # atoms tracked per row for valences (later ones share the last slot, unchecked)
# bond orders in half units (":" aromatic 1.5); "/" and "\\" are single bonds with a direction
BOND_ORDER2 = {"-": 2, "/": 2, "\\": 2, "=": 4, "#": 6, "$": 8, ":": 3}


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


def atom_capacity2(tok: str) -> int:
    """The most bonds (in half units) the atom of token `tok` may hold, as RDKit's sanitisation
    allows: its element's largest default valence, shifted for a charge to the isoelectronic
    element's (N+ as C, O- as F) and less the hydrogens written in a bracket; 0 for a token RDKit
    cannot read as one atom."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(tok, sanitize=False)
    if mol is None or mol.GetNumAtoms() != 1:
        return 0
    a = mol.GetAtomWithIdx(0)
    table = Chem.GetPeriodicTable()
    z = a.GetAtomicNum() - a.GetFormalCharge()
    valences = list(table.GetValenceList(z)) if 0 < z <= 118 else [-1]
    top = 8 if -1 in valences else max(valences)
    return 2 * max(top - a.GetNumExplicitHs(), 0)


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
    `update(tok)` with the drawn tokens (B,) or (B, 1). `valence` (default: whether the tokenizer
    writes Kekule SMILES) adds the valence checks of the module docstring."""

    def __init__(self, tokenizer, rows: int, device: torch.device | str = "cpu", valence: bool | None = None):
        check_tokenizer(tokenizer)
        self.valence = bool(getattr(tokenizer, "kekulize", False)) if valence is None else valence
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
        if self.valence:  # half units: what each token's atom may hold, what each bond token adds
            self.cap_of = torch.tensor([atom_capacity2(t) if k == ATOM else 0
                                        for t, k in zip(tokenizer.tokens, classes.tolist())], device=device)
            self.order_of = torch.tensor([BOND_ORDER2.get(t, 2) if k == BOND else 0
                                          for t, k in zip(tokenizer.tokens, classes.tolist())], device=device)
            self.atom_ids = (classes == ATOM).nonzero()[:, 0]
            self.bond_ids = (classes == BOND).nonzero()[:, 0]
            self.cap = torch.zeros((B, MAX_ATOMS), dtype=torch.long, device=device)  # per atom of the row
            self.used = torch.zeros((B, MAX_ATOMS), dtype=torch.long, device=device)
            self.pending = torch.zeros(B, dtype=torch.long, device=device)  # a bond symbol's order, 0 = none
            self.ring_order = torch.zeros((B, R), dtype=torch.long, device=device)  # reserved where it opened

    def reset(self, rows: torch.Tensor) -> None:
        """Start the rows where `rows` (B,) is True over, at a molecule's beginning (as __init__
        leaves every row; opened_bond is rewritten whenever a label opens)."""
        self.state[rows], self.depth[rows], self.atoms[rows] = S_START, 0, 0
        self.cur[rows], self.parent[rows], self.stack[rows], self.opened_at[rows] = -1, -1, -1, -1
        self.partners[rows] = -1
        if self.valence:
            self.cap[rows], self.used[rows], self.pending[rows], self.ring_order[rows] = 0, 0, 0, 0

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
        if not self.valence:
            return m
        held = m & self._valence_mask(is_open)
        return torch.where(held.any(1, keepdim=True), held, m)  # a dead end: the grammar alone

    def _slot(self, atom: torch.Tensor) -> torch.Tensor:
        return atom.clamp(0, MAX_ATOMS - 1)

    def _room(self, atom: torch.Tensor) -> torch.Tensor:
        """Room left, in half units, on each row's atom `atom` ((B,) or (B, K) atom indices of the
        row; -1, no atom yet: plenty)."""
        rows = torch.arange(len(atom), device=atom.device).view(-1, *[1] * (atom.dim() - 1))
        slot = self._slot(atom)
        return torch.where(atom >= 0, self.cap[rows, slot] - self.used[rows, slot], 16)

    def _valence_mask(self, is_open: torch.Tensor) -> torch.Tensor:
        """Tokens that keep every atom within its valence, and keep the row completable: while a
        ring is open, the atom the main chain goes on from (cur outside a branch, else the
        anchor of the outermost branch) keeps room for a single bond."""
        B, V = len(self.state), len(self.cls)
        ok = torch.ones((B, V), dtype=torch.bool, device=self.cls.device)
        free = self._room(self.cur)
        symbol = self.pending > 0
        order = torch.where(symbol, self.pending, 2)  # the next bond's order (implicit: single)
        open_rings = is_open.sum(1)
        main = torch.where(self.depth == 0, self.cur, self.stack[:, 0])  # where the main chain goes on
        main_free = self._room(main)
        cur_is_main = (self.cur == main) & (self.cur >= 0)
        need = torch.where(open_rings > 0, 2, 0)  # room the main atom keeps while rings are open
        # the next atom: it must hold the bond to cur (cur's room for a written bond was checked
        # at the symbol); outside a branch it becomes the main atom
        bonded = ~starts_molecule(self.state)
        k = torch.where(bonded, order, 0)
        cap = self.cap_of[self.atom_ids][None, :]  # (1, A)
        fits = (cap >= k[:, None]) & ~(bonded & ~symbol & (free < 2))[:, None]
        fits &= torch.where((self.depth == 0)[:, None], cap - k[:, None] >= need[:, None],
                            ~(cur_is_main & (main_free - k < need))[:, None])
        ok[:, self.atom_ids] = fits
        # a bond symbol: cur must hold it (and keep the main atom's room when cur is it, in a branch)
        bond = self.order_of[self.bond_ids][None, :]
        ok[:, self.bond_ids] = (bond <= free[:, None]) & ~(
            (cur_is_main & (self.depth > 0))[:, None] & (main_free[:, None] - bond < need[:, None]))
        # a branch adds at least a single bond to cur, which outside a branch is the main atom
        ok[:, self.open_ids] = (free >= 2 + torch.where(self.depth == 0, 2 * (open_rings > 0), 0))[:, None]
        # ring digits: opening reserves the bond's order on cur; closing adds it to cur, and to the
        # opener what a bond symbol written now adds; either way the main atom keeps its room
        # while a ring stays open
        opener_free = self._room(self.opened_at)  # (B, R); only read where the label is open
        close_order = torch.where(symbol[:, None] & ~self.opened_bond, order[:, None], self.ring_order)
        extra = close_order - self.ring_order
        main_after_open = main_free - torch.where(cur_is_main, order, 0)
        can_open = (free >= order) & (main_after_open >= 2)
        main_after_close = (main_free[:, None] - torch.where(cur_is_main[:, None], close_order, 0)
                            - torch.where(self.opened_at == main[:, None], extra, 0))
        can_close = ((free[:, None] >= close_order) & (opener_free >= extra)
                     & ((open_rings[:, None] <= 1) | (main_after_close >= 2)))
        ok[:, self.ring_ids] = torch.where(is_open, can_close, can_open[:, None])
        return ok

    def update(self, tok: torch.Tensor) -> None:
        tok = tok.reshape(-1)
        c = self.cls[tok]
        if self.valence:
            self._update_valence(tok, c)
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
        if self.valence:
            self.pending = torch.where(c == BOND, self.order_of[tok], 0)
        if bool(ended.any()):
            self.reset(ended)

    def _update_valence(self, tok: torch.Tensor, c: torch.Tensor) -> None:
        """The bonds token `tok` makes, booked before the grammar state moves on (cur, the
        state and the ring labels are still those `tok` followed)."""
        ar = torch.arange(len(tok), device=tok.device)
        order = torch.where(self.pending > 0, self.pending, 2)
        cur = self._slot(self.cur)
        # a new atom: its capacity, and the bond to cur on both ends
        atom = c == ATOM
        bonded = atom & ~starts_molecule(self.state)
        new = self._slot(self.atoms)
        self.cap[ar[atom], new[atom]] = self.cap_of[tok[atom]]
        self.used[ar[atom], new[atom]] = torch.where(bonded, order, 0)[atom]
        self.used[ar[bonded], cur[bonded]] += order[bonded]
        # a ring digit: open (reserve on cur) or close (book on cur, and on the opener what a
        # bond symbol written at the closing adds to what it reserved)
        r = self.ring_of[tok]
        rows = (r >= 0).nonzero()[:, 0]
        if len(rows):
            rr = r[rows]
            was = self.opened_at[rows, rr]
            closing = was >= 0
            symbol_now = (self.pending[rows] > 0) & ~self.opened_bond[rows, rr]
            k = torch.where(closing & ~symbol_now, self.ring_order[rows, rr], order[rows])
            self.used[rows, cur[rows]] += k
            extra = torch.where(closing, k - self.ring_order[rows, rr], 0)
            self.used[rows, self._slot(was.clamp(min=0))] += extra
            self.ring_order[rows, rr] = torch.where(closing, 0, k)
