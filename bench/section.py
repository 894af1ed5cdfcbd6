"""What a benchmark returns: figures with units, method and the target they answer to."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Figure:
    measure: str
    value: float
    unit: str
    target: str = ""  # as the issue states it, e.g. "< 1 s"; empty when there is none
    met: bool | None = None  # None when there is no target

    def shown(self) -> str:
        if self.value >= 100 or self.value == int(self.value):
            number = f"{self.value:,.0f}"
        elif self.value >= 1:
            number = f"{self.value:.2f}"
        else:
            number = f"{self.value:.3g}"
        return f"{number} {self.unit}".strip()


@dataclass
class Section:
    title: str
    method: str  # markdown: what was measured and how, so anyone can reproduce it
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # everything measured, kept in bench/results/

    def add(
        self, measure: str, value: float, unit: str, target: str = "", met: bool | None = None
    ) -> Figure:
        figure = Figure(measure, value, unit, target, met)
        self.figures.append(figure)
        return figure

    def show(self) -> None:
        """The figures and notes as a short list, for a benchmark run on its own."""
        print(f"## {self.title}\n")
        for figure in self.figures:
            verdict = "" if figure.met is None else (" met" if figure.met else " NOT met")
            target = f"  (target {figure.target}:{verdict})" if figure.target else ""
            print(f"- {figure.measure}: {figure.shown()}{target}")
        for note in self.notes:
            print(f"- note: {note}")
