"""Public clinical-like text for proxy tasks: other templates and other vocabularies than the private
generator (:mod:`dp_gym.data.clinical_notes`).

A controller trained on a proxy must meet data that differs from the deployment data, as real
public data would (a public corpus of the same domain, written by other people). So nothing here is
the private generator with another seed: the note types (referral letters, ward-round entries,
triage lines), the names, conditions, drugs and phrasing are all disjoint from it. Every record is
a pure function of ``(kind, seed, index)``.
"""

from __future__ import annotations

import random

GIVEN_NAMES = ("Aurelio", "Brigid", "Casimir", "Dagny", "Eamon", "Fenna", "Gustav", "Hedda", "Isidro", "Jolanda",
               "Kasper", "Liesel", "Marek", "Nadia", "Oskar", "Petra", "Radu", "Saoirse", "Tobias", "Ulla")
SURNAMES = ("Albrecht", "Bianchi", "Carvalho", "Dvorak", "Esposito", "Falk", "Grieg", "Holm", "Iversen",
            "Jovanovic", "Kaur", "Lindqvist", "Mendes", "Novak", "Oyelaran", "Pires", "Quist", "Reyes")
CONDITIONS = (
    ("community-acquired pneumonia", "amoxicillin", "1 g three times a day for five days"),
    ("cellulitis of the left shin", "flucloxacillin", "500 mg four times a day"),
    ("iron deficiency anaemia", "ferrous fumarate", "210 mg twice a day"),
    ("allergic rhinitis", "cetirizine", "10 mg at bedtime"),
    ("plantar fasciitis", "naproxen", "250 mg twice a day with food"),
    ("gout of the right big toe", "colchicine", "500 micrograms twice a day"),
    ("urinary tract infection", "nitrofurantoin", "100 mg twice a day for three days"),
    ("atopic eczema", "hydrocortisone cream 1%", "a thin layer twice a day"),
    ("vitamin D deficiency", "colecalciferol", "800 units daily"),
    ("benign positional vertigo", "betahistine", "16 mg three times a day"),
)
FINDINGS = ("temperature 38.2, chest crackles at the right base", "swelling and warmth over the shin",
            "pale conjunctivae, otherwise unremarkable", "clear nasal discharge, no sinus tenderness",
            "tenderness at the heel on the first steps of the day", "red, hot and swollen joint",
            "dysuria and frequency for two days", "dry, itchy patches on both elbows",
            "low mood in winter and aching bones", "brief spinning spells when turning in bed")
FOLLOW_UPS = ("review in one week", "return if not improving in 48 hours", "repeat bloods in six weeks",
              "safety-netting advice given", "referred to physiotherapy", "see the practice nurse in a month")
WARDS = ("Ward 4B", "the assessment unit", "the day surgery unit", "Ward 7", "the respiratory ward")


def _referral(rng: random.Random) -> str:
    condition, drug, dose = rng.choice(CONDITIONS)
    return (f"Dear colleague, thank you for seeing {rng.choice(GIVEN_NAMES)} {rng.choice(SURNAMES)}, aged "
            f"{rng.randint(20, 85)}, with {condition}. On examination: {rng.choice(FINDINGS)}. Started {drug} "
            f"{dose}; {rng.choice(FOLLOW_UPS)}. Kind regards.")


def _ward_round(rng: random.Random) -> str:
    condition, drug, dose = rng.choice(CONDITIONS)
    return (f"Ward round, {rng.choice(WARDS)}, day {rng.randint(1, 9)}: {rng.choice(SURNAMES)} is being treated "
            f"for {condition}. Observations stable. Continue {drug} {dose}. Plan: {rng.choice(FOLLOW_UPS)}.")


def _triage(rng: random.Random) -> str:
    condition, _, _ = rng.choice(CONDITIONS)
    return (f"Triage {rng.randint(0, 23):02d}:{rng.choice(['00', '15', '30', '45'])}: {rng.choice(GIVEN_NAMES)}, "
            f"{rng.randint(18, 90)} years, presenting with {rng.choice(FINDINGS)}; likely {condition}; "
            f"priority {rng.choice(['green', 'yellow', 'orange'])}.")


KINDS = {"referral": _referral, "ward_round": _ward_round, "triage": _triage}


def public_notes(n: int, seed: int) -> list[str]:
    """``n`` public clinical-like records of mixed kinds, a pure function of ``(n, seed)``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"public-notes/{seed}")
    writers = list(KINDS.values())
    return [rng.choice(writers)(rng) for _ in range(n)]
