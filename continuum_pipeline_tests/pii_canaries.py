"""A canary corpus for the redactor and for every door that must apply it.

`CANARIES[kind]` lists unique, realistic, *valid* values (Luhn-valid cards, checksum-valid IBANs, numbers
`phonenumbers` accepts, SSNs outside the SSA's never-issued areas, well-formed keys): a test can push
them through any path and then search files for the literal value. `canary_texts()` embeds each one in
sentences, JSON strings and fenced code blocks. `NEGATIVES` are ordinary texts (order numbers, dates,
prices, versions, invoice numbers, Luhn-invalid 16-digit numbers) that must come out unchanged.

Decisions the corpus pins down:
- A dotted quad right after `v`/`version`/`release`/`build` is a version string and stays
  ("version 1.2.3.4"); a bare dotted quad is an IP address.
- A bare 9-digit run is not an SSN (too many order and account numbers look like one); SSNs are
  written `AAA-GG-SSSS` or `AAA GG SSSS`.
- Phone numbers without a `+country` prefix are read in the default region (US).
- In a URL, `user:password` is the secret; the host stays (the canary's full value still disappears).

`support_desk_texts()` generates what the example app says and is told (it imports the scenario, which
tests may): none of it may change.
"""

from __future__ import annotations

import json
import random

PEM_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEAv3Qx7Ffq0canaryK3yLMrtzStRV0EOTe5K8rNPQwoHNEfeY2wO\n"
    "gGyVe6aE1kMfterXQk0J4V0CTFhI8j0fpvc2HX9hjRUy5w4g4qZmjef0foRn5UbVPs\n"
    "jioSV72yVsmz5Pu0mBRu9wMMv5U3JS3M6t12S2oy+7Ca3q4QnEqZcgOXU1K4eLFFyK\n"
    "QtiEz0z9py2OHV3ZJYkILYUqcSKH==\n"
    "-----END RSA PRIVATE KEY-----"
)

CANARIES: dict[str, list[str]] = {
    "EMAIL_ADDRESS": [
        "jane.doe+refunds@example.com",
        "ops-team@mail.support.example.co.uk",
        "JOHN.SMITH77@EXAMPLE.ORG",
        "a.b_c-d@sub.domain-x.io",
        "customer.4711@shop.example.net",
    ],
    "PHONE_NUMBER": [
        "+1 415 555 0132",
        "(212) 555-0187",
        "212-555-0144",
        "2125550199",
        "415.555.0173",
        "646 555 0111",
        "+44 20 7946 0958",
        "+44 7911 123456",
        "+49 30 12345678",
        "+49 151 23456789",
        "+33 1 42 68 53 00",
        "+33 6 12 34 56 78",
        "+91 98765 43210",
        "+91 22 2778 1234",
    ],
    "CREDIT_CARD": [
        "4983690060267730",            # Visa, plain
        "4546 8487 4526 8594",         # Visa, spaced
        "4693-8493-7396-4018",         # Visa, dashed
        "5175.7228.4642.8925",         # Mastercard, dotted
        "5569 3719 5562 7994",         # Mastercard, spaced
        "2221556063622468",            # Mastercard 2-series, plain
        "3414 162743 73261",           # Amex, 4-6-5
        "3722-297511-96416",           # Amex, dashed
    ],
    "IBAN_CODE": [
        "DE24 3411 6339 7359 2960 37",
        "DE05519664073537038863",
        "GB64 MSST 0698 9290 0400 61",
        "GB92BGYJ05477303879507",
        "FR72 6680 5747 2073 7883 6907 531",
        "FR3003145574459659847151056",
        "NL30WHWH8189192863",
        "NL32 RVHO 8401 7001 11",
        "ES93 4228 7466 8383 2365 5665",
        "ES0729157047106529937005",
    ],
    "US_SSN": [
        "536-22-8491",
        "412 83 7265",
        "231-67-4059",
    ],
    "IP_ADDRESS": [
        "10.213.7.42",
        "203.0.113.195",
        "172.31.254.9",
        "2001:db8:85a3::8a2e:370:7334",
        "fe80::1ff:fe23:4567:890a",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
    ],
    "SECRET": [
        "sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj",
        "sk-proj-pNxnyVmihA_2O76UMFxFkM_R5Kjp1vRt-1fjORS_LZDe1f8rESQedUStPKR0CsTy4Qwb8D",
        "AKIAWKH5DNSIPZZ5FK2Z",
        "ASIA9RI19R0WYOJFLJOO",
        "ghp_aF1LlqsajAIxNKu8iS2G8NPRVdD53X83RZJz",
        "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",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjYW5hcnktNzczMSIsIm5hbWUiOiJBZGEgUXVpbGwiLCJpYXQiOjE3NjM4"
        "MDAwMDB9.UvTCQCyEZDz_TddJ8HyS5SUkCnD8zRA9a9SkpXz9w3Q",
        PEM_KEY,
        "postgres://app_admin:Qx7vN2pLw9zT@db.internal.example.com:5432/orders",
    ],
}

# Placeholders the redactor writes, per kind (the contract's PLACEHOLDERS; repeated so a test can check
# files without importing the redactor).
PLACEHOLDER = {"EMAIL_ADDRESS": "<EMAIL>", "PHONE_NUMBER": "<PHONE>", "CREDIT_CARD": "<CARD>",
               "IBAN_CODE": "<IBAN>", "US_SSN": "<SSN>", "IP_ADDRESS": "<IP>", "SECRET": "<SECRET>"}


def all_canaries() -> list[tuple[str, str]]:
    """(kind, value) for every canary."""
    return [(kind, value) for kind, values in CANARIES.items() for value in values]


def needles(value: str) -> list[str]:
    """Strings to search stored files for: the value itself and, for multi-line values, each long line
    (a JSON writer escapes the newlines, so the whole block never appears verbatim)."""
    lines = [line for line in value.splitlines() if len(line) >= 20 and "-----" not in line]
    return [value, *lines] if len(lines) > 1 else [value]


def canary_texts() -> list[tuple[str, str, str]]:
    """(text, kind, value): every canary in a sentence, inside a JSON string, inside a fenced code block
    and wrapped in punctuation. Each text holds exactly one canary."""
    out: list[tuple[str, str, str]] = []
    for kind, value in all_canaries():
        out.append((f"Hi, you can reach me at {value} if anything changes with my order #48213.", kind, value))
        out.append((json.dumps({"customer": {"contact": value, "note": "vip, order #50917"}}), kind, value))
        out.append((f"Here is my config:\n```python\nclient = Client(credential={json.dumps(value)})\n```\n"
                    "It fails since v2.13.0.", kind, value))
        out.append((f"({value}).", kind, value))
    return out


def mixed_text() -> tuple[str, dict[str, int]]:
    """One long text holding every canary once, and the counts the redactor must report."""
    text = " and ".join(f"[{value}]" for _, value in all_canaries())
    return text, {kind: len(values) for kind, values in CANARIES.items()}


NEGATIVES: list[str] = [
    # order numbers, tracking ids, invoices, tickets
    "Where is my refund for order #48213?",
    "Order 10023456 shipped yesterday, tracking 1Z999AA10123456784.",
    "Invoice INV-2026-004512 covers orders #31337 and #31338.",
    "Ticket SUP-884213 was reopened by the customer.",
    "Your RMA number is RMA-77231-B.",
    "Reference 2026112200017 was filed at 09:41.",
    # dates and times
    "Delivery is scheduled for 2026-11-22 between 9 am and 6 pm.",
    "Please deliver on 22/11/2026 or 11/23/2026.",
    "The log says 2026-11-22T04:41:26Z and then 12:30:45.",
    "We are open Monday to Friday from 9:00 to 18:00.",
    # prices and quantities
    "The total is $1,234.56 including tax.",
    "It costs 19.99 EUR, or 1.299,00 EUR for the pro plan.",
    "Shipping is free on orders over 50 dollars, otherwise it costs 5 dollars.",
    "Your plan now has 25 seats and 1,500 GB of storage.",
    # versions, builds, hashes, ids
    "It fails since v2.13.0 of the app.",
    "Upgrade to version 1.2.3.4 of the desktop client.",
    "Running build 10.0.19045.3693 on Windows.",
    "Commit e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 fixed it.",
    "Session 3f2b6c1e-9a4d-4c1b-8f7e-2d5a6b9c0e11 expired.",
    "ISBN 978-3-16-148410-0 is out of stock.",
    "Error code 0x80070005 at line 42:17.",
    "Call std::vector<int>::size() instead.",
    # numbers that look like cards but fail Luhn, and account-like digit runs
    "Card number 4111 1111 1111 1112 was declined.",
    "The barcode reads 1234567812345678.",
    "Order ids 5555-5555-5555-4445 and 6011-0000-0000-0001 do not exist.",
    "Tracking number 940011189922385512345 is in transit.",
    # SSN-shaped but never issued, and IBAN-shaped with a bad checksum
    "Test numbers 000-12-3456, 666-45-6789 and 912-34-5678 are not SSNs.",
    "IBAN DE00 1234 5678 9012 3456 78 has a wrong checksum.",
    # near misses for emails and secrets
    "Contact us via the form at example.com/contact or @ShopfrontHelp.",
    "Use the sk- prefix in settings, and the task-force meets on Monday.",
    "The token field is empty; AKIA alone is not a key.",
    # URLs without credentials, host:port, times with seconds
    "Docs at https://docs.example.com:8443/v2/orders?id=48213#top and http://localhost:8080/health.",
    "Mention @support or write to the help desk; ports 5432 and 6379 are closed.",
]


def support_desk_texts(n: int = 1500) -> list[str]:
    """Everything the support desk says or is told: its tokenizer corpus (every template with its slot values),
    sampled traffic of both phases and splits, teacher answers (right and wrong), agents' corrections and the
    golden set."""
    from continuum_pipeline.scenario import SupportDesk, load_scenario

    desk = SupportDesk(load_scenario(), seed=11)
    rng = random.Random(5)
    texts = [*desk.corpus_texts(), desk.scenario.system_prompt]
    for i in range(n):
        request = desk.sample_request(("before", "after")[i % 2], ("train", "golden")[i % 3 == 0], rng)
        answer = desk.teacher_answer(request, rng)
        texts += [request.question, answer, json.dumps(request.metadata)]
        texts += [e["correction"] for e in desk.user_feedback(request, answer, rng) if "correction" in e]
    for item in desk.golden_set():
        texts += [item.expected, *(m["content"] for m in item.messages)]
    return texts
