"""A deterministic generator of clinical-note-like records: the default *private* corpus.

Every record is a fictional patient note (name, date, age, diagnosis, medication, dose, free
text). Nothing is real; the point is a corpus with the structure and the kind of secrets that make
private fine-tuning matter. Records are a pure function of ``(seed, index)``, so the train split
and the public validation split are disjoint by construction (different seeds) and identical on
every machine.

Canaries (Carlini et al., "The Secret Sharer", 2019) are records with a known secret drawn from a
known space; the privacy evaluation measures how much a model learned them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST_NAMES = (
    "Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
    "Luis", "Maya", "Nils", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera",
    "Wen", "Xavier", "Yara", "Zoe",
)
LAST_NAMES = (
    "Abbott", "Becker", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova",
    "Jensen", "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov", "Quintero", "Rossi",
    "Schmidt", "Tanaka", "Ueda", "Varga", "Weber", "Yilmaz", "Zhang",
)
DIAGNOSES = (
    ("type 2 diabetes", "metformin", ("500 mg twice daily", "850 mg once daily")),
    ("hypertension", "lisinopril", ("10 mg once daily", "20 mg once daily")),
    ("asthma", "salbutamol", ("two puffs as needed", "one puff before exercise")),
    ("hypothyroidism", "levothyroxine", ("50 mcg each morning", "75 mcg each morning")),
    ("migraine", "sumatriptan", ("50 mg at onset", "100 mg at onset")),
    ("atrial fibrillation", "apixaban", ("5 mg twice daily", "2.5 mg twice daily")),
    ("major depression", "sertraline", ("50 mg once daily", "100 mg once daily")),
    ("gastric reflux", "omeprazole", ("20 mg before breakfast", "40 mg before breakfast")),
    ("high cholesterol", "atorvastatin", ("20 mg at night", "40 mg at night")),
    ("chronic back pain", "ibuprofen", ("400 mg three times daily", "200 mg as needed")),
)
COMPLAINTS = (
    "reports fatigue and poor sleep", "denies chest pain", "complains of headaches in the morning",
    "feels better since the last visit", "reports mild nausea after meals", "has had a dry cough for a week",
    "notes swelling of the ankles", "is worried about weight gain", "reports dizziness when standing",
    "has no new complaints",
)
PLANS = (
    "continue current treatment", "repeat blood tests in three months", "refer to cardiology",
    "increase the dose and review in two weeks", "advise diet and exercise", "order a chest x-ray",
    "schedule a follow-up visit", "stop the medication and monitor",
)


@dataclass(frozen=True)
class Canary:
    """A secret sequence inserted ``repeats`` times into the private training split.

    ``template.format(secret=...)`` gives the record; ``secret`` is drawn uniformly from
    ``secret_space_size`` candidates (``n_digits`` decimal digits).
    """

    template: str
    secret: str
    n_digits: int
    repeats: int

    @property
    def text(self) -> str:
        return self.template.format(secret=self.secret)

    @property
    def secret_space_size(self) -> int:
        return 10**self.n_digits


def clinical_note(rng: random.Random) -> str:
    """One fictional patient note drawn from ``rng``."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    diagnosis, drug, doses = rng.choice(DIAGNOSES)
    year, month, day = rng.randint(2015, 2024), rng.randint(1, 12), rng.randint(1, 28)
    age = rng.randint(18, 90)
    # clinical shorthand (Dx: diagnosis, Rx: prescription), as real notes are written
    return (
        f"{first} {last}, {age}, seen {year}-{month:02d}-{day:02d}. Dx: {diagnosis}. "
        f"Pt {rng.choice(COMPLAINTS)}. Rx: {drug} {rng.choice(doses)}. Plan: {rng.choice(PLANS)}."
    )


def clinical_notes(n: int, seed: int) -> list[str]:
    """``n`` notes, a pure function of ``(n, seed)``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"clinical-notes/{seed}")
    return [clinical_note(rng) for _ in range(n)]


def make_canaries(n_canaries: int, repeats: int, seed: int, n_digits: int = 6) -> list[Canary]:
    """``n_canaries`` canaries with secrets drawn from ``10**n_digits`` candidates."""
    rng = random.Random(f"canaries/{seed}")
    canaries = []
    for index in range(n_canaries):
        patient = rng.randint(1000, 9999)
        secret = "".join(rng.choice("0123456789") for _ in range(n_digits))
        template = f"Patient {patient} insurance number {{secret}}. Case {index}."
        canaries.append(Canary(template=template, secret=secret, n_digits=n_digits, repeats=repeats))
    return canaries


def private_train_records(n: int, seed: int, canaries: list[Canary] | None = None) -> list[str]:
    """The private training split: ``n`` notes plus every canary ``repeats`` times, shuffled."""
    records = clinical_notes(n, seed)
    for canary in canaries or []:
        records.extend([canary.text] * canary.repeats)
    random.Random(f"shuffle/{seed}").shuffle(records)
    return records
