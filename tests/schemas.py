"""Twenty JSON schemas with a request each, for constrained decoding tests and the benchmark:
nested objects, arrays with item bounds, enums, numbers with ranges, patterns, $ref, optional
properties. Strings are bounded so a 135M model finishes within the token budget."""

NAME = {"type": "string", "minLength": 1, "maxLength": 24}

SCHEMAS: list[tuple[str, dict]] = [
    (
        "Invent a person. Give their name and age as JSON.",
        {
            "type": "object",
            "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"],
        },
    ),
    (
        "Is the sky green? Answer as JSON with a boolean field 'answer'.",
        {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]},
    ),
    (
        "Classify the sentiment of 'I loved this film' as JSON.",
        {
            "type": "object",
            "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}},
            "required": ["sentiment"],
        },
    ),
    (
        "Give the temperature in Paris today in Celsius as JSON.",
        {
            "type": "object",
            "properties": {
                "city": NAME,
                "celsius": {"type": "number", "minimum": -50, "maximum": 50, "multipleOf": 0.5},
            },
            "required": ["city", "celsius"],
        },
    ),
    (
        "List three fruits as JSON.",
        {
            "type": "object",
            "properties": {
                "fruits": {"type": "array", "items": NAME, "minItems": 3, "maxItems": 3}
            },
            "required": ["fruits"],
        },
    ),
    (
        "Give a US phone number as JSON.",
        {
            "type": "object",
            "properties": {"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{3}-[0-9]{4}$"}},
            "required": ["phone"],
        },
    ),
    (
        "Describe a book (title, author with name and birth year) as JSON.",
        {
            "type": "object",
            "properties": {
                "title": NAME,
                "author": {
                    "type": "object",
                    "properties": {
                        "name": NAME,
                        "born": {"type": "integer", "minimum": 1000, "maximum": 2025},
                    },
                    "required": ["name", "born"],
                },
            },
            "required": ["title", "author"],
        },
    ),
    (
        "Give two points of a triangle as JSON.",
        {
            "$defs": {
                "point": {
                    "type": "object",
                    "properties": {
                        "x": {"type": "integer", "minimum": -10, "maximum": 10},
                        "y": {"type": "integer", "minimum": -10, "maximum": 10},
                    },
                    "required": ["x", "y"],
                }
            },
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
            "required": ["a", "b"],
        },
    ),
    (
        "Give a product with a name and optional price as JSON.",
        {
            "type": "object",
            "properties": {
                "name": NAME,
                "price": {"type": "number", "minimum": 0, "maximum": 1000},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    ),
    (
        "Pick a primary colour as JSON.",
        {
            "type": "object",
            "properties": {"colour": {"type": "string", "enum": ["red", "yellow", "blue"]}},
            "required": ["colour"],
        },
    ),
    (
        "Give between one and two tags for a cooking blog post as JSON.",
        {
            "type": "object",
            "properties": {
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[a-z]{2,12}$"},
                    "minItems": 1,
                    "maxItems": 2,
                }
            },
            "required": ["tags"],
        },
    ),
    (
        "Rate a restaurant from 1 to 5 stars with a short comment, as JSON.",
        {
            "type": "object",
            "properties": {
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "comment": {"type": "string", "maxLength": 40},
            },
            "required": ["stars", "comment"],
        },
    ),
    (
        "Give a date in ISO format (YYYY-MM-DD) for New Year's Day 2024 as JSON.",
        {
            "type": "object",
            "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
            "required": ["date"],
        },
    ),
    (
        "Give the probability of rain tomorrow as a number between 0 and 1, as JSON.",
        {
            "type": "object",
            "properties": {
                # a bound on the digits too: sampled, a free number can run on to max_new_tokens
                # (a binary fraction, as jsonschema checks multipleOf in floating point)
                "probability": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25}
            },
            "required": ["probability"],
        },
    ),
    (
        "Describe a shopping list of up to three items with quantities, as JSON.",
        {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "maxItems": 3,
                    "items": {
                        "type": "object",
                        "properties": {
                            "item": NAME,
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 12},
                        },
                        "required": ["item", "quantity"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["items"],
        },
    ),
    (
        "Give an HTTP status code and its meaning as JSON.",
        {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "minimum": 100, "maximum": 599},
                "meaning": {"type": "string", "maxLength": 30},
            },
            "required": ["code", "meaning"],
        },
    ),
    (
        "Say whether 17 is prime, with a one-sentence reason, as JSON.",
        {
            "type": "object",
            "properties": {
                "prime": {"type": "boolean"},
                "reason": {"type": "string", "maxLength": 60},
            },
            "required": ["prime", "reason"],
            "additionalProperties": False,
        },
    ),
    (
        "Give an email address for a support team as JSON.",
        {
            "type": "object",
            "properties": {
                "email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.(com|org)$"}
            },
            "required": ["email"],
        },
    ),
    (
        "Describe a tree: its species and two child branches with lengths, as JSON.",
        {
            "$defs": {
                "branch": {
                    "type": "object",
                    "properties": {"length": {"type": "integer", "minimum": 1, "maximum": 99}},
                    "required": ["length"],
                    "additionalProperties": False,
                }
            },
            "type": "object",
            "properties": {
                "species": {"enum": ["oak", "pine", "birch"]},
                "branches": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/branch"},
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
            "required": ["species", "branches"],
            "additionalProperties": False,
        },
    ),
    (
        "Give a version number (major, minor, patch) and whether it is stable, as JSON.",
        {
            "type": "object",
            "properties": {
                "version": {"type": "string", "pattern": "^[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}$"},
                "stable": {"type": "boolean"},
                "notes": {"type": "string", "maxLength": 20},
            },
            "required": ["version", "stable"],
            "additionalProperties": False,
        },
    ),
]


def _closed(schema):
    """Objects allow no properties besides theirs (what OpenAI's strict mode requires); an open
    object lets a model add keys until it runs out of tokens, valid but never finished."""
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _closed(value)
    elif isinstance(schema, list):
        for value in schema:
            _closed(value)
    return schema


SCHEMAS = [(request, _closed(schema)) for request, schema in SCHEMAS]
