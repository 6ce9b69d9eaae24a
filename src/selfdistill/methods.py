"""A method spec: a training method and the settings of one variant of it, parsed once.

Written on the command line and stored in plan.json / results.json as text, ``<method>[@<key>=<value>,...]``:

    sdft                         the method alone
    sft@lr=1e-4                  a short key: lr = optim.lr, template = context.teacher_template
    sft@lr=1e-4,model.lora=true  any dotted config key

:meth:`MethodSpec.parse` reads that text once, at the command line's edge (and when a stored plan or results file
is read back); the rest of the code passes the typed object. Its text (``str(spec)``) is exactly what was written,
so folders and results written before keep their names. :attr:`MethodSpec.dir_name` is its run folder and
:attr:`MethodSpec.family` what a report's frontier is drawn for (the method and its settings other than the
learning rate).
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS: tuple[str, ...] = ("sdft", "sft", "dft")
SHORT_KEYS = {"lr": "optim.lr", "template": "context.teacher_template"}


@dataclass(frozen=True)
class MethodSpec:
    method: str  # sdft | sft | dft
    settings: tuple[tuple[str, str], ...] = ()  # (key as written, value as written), in order

    @classmethod
    def parse(cls, text: str | MethodSpec) -> MethodSpec:
        """'sft@lr=2e-5,model.lora=true' -> MethodSpec('sft', (('lr', '2e-5'), ('model.lora', 'true')));
        ValueError naming the spec for an unknown method or a setting without '='."""
        if isinstance(text, MethodSpec):
            return text
        base, _, rest = str(text).strip().partition("@")
        if base not in METHODS:
            raise ValueError(f"unknown method {base!r} in {text!r} ({', '.join(METHODS)})")
        settings = []
        for kv in filter(None, rest.split(",")):
            k, eq, v = kv.partition("=")
            if not eq or not k.strip():
                raise ValueError(f"method spec {text!r}: expected KEY=VALUE after '@', got {kv!r}")
            settings.append((k.strip(), v.strip()))
        return cls(base, tuple(settings))

    @classmethod
    def variant(cls, method: str, lr: str, grid: tuple[tuple[str, str], ...] = ()) -> MethodSpec:
        """A sweep's variant: the method at a learning rate, with grid settings after it."""
        return cls(method, (("lr", str(lr)), *grid))

    def __str__(self) -> str:
        return self.method + ("@" + ",".join(f"{k}={v}" for k, v in self.settings) if self.settings else "")

    @property
    def overrides(self) -> dict[str, str]:
        """Dotted config overrides of this variant, train.method included (values as written; the config
        coerces them)."""
        return {"train.method": self.method, **{SHORT_KEYS.get(k, k): v for k, v in self.settings}}

    @property
    def dir_name(self) -> str:
        """Its run folder: 'sft@lr=1e-4,model.lora=true' -> 'sft_at_lr-1e-4_model.lora-true'."""
        return str(self).replace("@", "_at_").replace("=", "-").replace(",", "_")

    @property
    def family(self) -> str:
        """'sdft@lr=1e-4,model.lora=true' -> 'sdft@model.lora=true'; 'sft@lr=2e-5' -> 'sft': the method and its
        settings other than the learning rate, i.e. what a frontier is drawn for."""
        keep = [(k, v) for k, v in self.settings if SHORT_KEYS.get(k, k) != "optim.lr"]
        return str(MethodSpec(self.method, tuple(keep)))


def parse_methods(text: str, flag: str = "--methods") -> list[MethodSpec]:
    """'sdft,sft@lr=1e-4' -> two specs. Commas inside a spec's settings belong to it: a new spec starts only at a
    name of a method. A one-line ValueError names the flag."""
    specs: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if specs and "@" in specs[-1] and part.partition("@")[0] not in METHODS:
            specs[-1] += "," + part
        else:
            specs.append(part)
    try:
        return [MethodSpec.parse(s) for s in specs]
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None


def family_of(text: str) -> str:
    """The report family of a stored method text; a text that is not a method spec is its own family."""
    try:
        return MethodSpec.parse(text).family
    except ValueError:
        return str(text)
