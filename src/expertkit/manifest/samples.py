"""The sample conversations ``expert-cli init`` writes to ``data/train.jsonl``: a dozen correct,
task-shaped records per task, enough for every command the scaffold suggests (validate, data
inspect, train, chat) to run before the user brings their own data. Built from small tables of
values so each answer is right by construction."""

from __future__ import annotations

Sample = tuple[str, str]

_TABLES = (
    ("singer", "(id INTEGER, name TEXT, age INTEGER)", "name", "age"),
    ("album", "(id INTEGER, title TEXT, year INTEGER)", "title", "year"),
    ("city", "(id INTEGER, name TEXT, population INTEGER)", "name", "population"),
    ("product", "(id INTEGER, label TEXT, price REAL)", "label", "price"),
)


def _sql() -> list[Sample]:
    samples = []
    for table, columns, text, number in _TABLES:
        schema = f"CREATE TABLE {table} {columns}"
        samples += [
            (f"{schema}\nHow many rows does {table} have?", f"SELECT count(*) FROM {table}"),
            (f"{schema}\nList every {text} in {table}.", f"SELECT {text} FROM {table}"),
            (f"{schema}\nWhat is the largest {number} in {table}?", f"SELECT max({number}) FROM {table}"),
        ]
    return samples


_FUNCTIONS = (
    ("get_weather", "city", ("Paris", "Lagos", "Osaka", "Lima")),
    ("search_books", "query", ("whales", "gardening", "chess", "volcanoes")),
    ("translate", "text", ("good morning", "thank you", "see you soon", "how much")),
)


def _json() -> list[Sample]:
    samples = []
    for name, parameter, values in _FUNCTIONS:
        declared = f'Functions: [{{"name": "{name}", "parameters": {{"{parameter}": "string"}}}}]'
        for value in values:
            call = f'{{"name": "{name}", "arguments": {{"{parameter}": "{value}"}}}}'
            samples.append((f"{declared}\nCall {name} for {value}.", call))
    return samples


_TS_FUNCTIONS = (
    ("adds two numbers", "add(a: number, b: number): number", "a + b"),
    ("tells whether a number is even", "isEven(n: number): boolean", "n % 2 === 0"),
    ("reverses a string", "reverse(s: string): string", 's.split("").reverse().join("")'),
    ("sums an array of numbers", "sum(xs: number[]): number", "xs.reduce((a, b) => a + b, 0)"),
    ("returns the largest number of an array", "largest(xs: number[]): number", "Math.max(...xs)"),
    ("upper-cases a string's first letter", "capitalize(s: string): string", "s[0].toUpperCase() + s.slice(1)"),
    ("clamps a number to bounds", "clamp(x: number, lo: number, hi: number): number", "Math.min(Math.max(x, lo), hi)"),
    ("counts the words in a sentence", "wordCount(s: string): number", "s.trim().split(/\\s+/).filter(Boolean).length"),
    ("squares every number of an array", "squares(xs: number[]): number[]", "xs.map((x) => x * x)"),
    ("joins words with commas", "commaJoin(words: string[]): string", 'words.join(", ")'),
)  # fmt: skip


def _typescript() -> list[Sample]:
    return [
        (f"A function that {what}.", f"export function {signature} {{\n  return {body};\n}}")
        for what, signature, body in _TS_FUNCTIONS
    ]


_LABELS = (("Person", "name", "Ada"), ("Movie", "title", "Alien"), ("City", "name", "Oslo"), ("Book", "title", "Dune"))


def _cypher() -> list[Sample]:
    samples = []
    for label, key, value in _LABELS:
        schema = f"Node properties: {label} {{{key}: STRING}}"
        samples += [
            (f"{schema}\nList five {label.lower()} {key}s.", f"MATCH (n:{label}) RETURN n.{key} LIMIT 5"),
            (f"{schema}\nHow many {label.lower()} nodes are there?", f"MATCH (n:{label}) RETURN count(n)"),
            (f"{schema}\nFind {value}.", f"MATCH (n:{label}) WHERE n.{key} = '{value}' RETURN n"),
        ]  # fmt: skip
    return samples


def _generic() -> list[Sample]:
    return [
        ("Say hello.", "Hello!"),
        ("Say goodbye.", "Goodbye!"),
        ("What is 2 plus 3?", "5"),
        ("What is 10 minus 4?", "6"),
        ("Name the capital of France.", "Paris"),
        ("Name the capital of Japan.", "Tokyo"),
        ("Translate 'thank you' into French.", "Merci."),
        ("Translate 'good night' into Spanish.", "Buenas noches."),
        ("Give the opposite of 'hot'.", "Cold."),
        ("Give the opposite of 'early'.", "Late."),
    ]


SAMPLES = {"sql": _sql, "json": _json, "typescript": _typescript, "cypher": _cypher, "generic": _generic}


def task_samples(task: str) -> list[Sample]:
    """The sample (question, answer) pairs for ``task`` (every preset task has some)."""
    return SAMPLES[task]()
