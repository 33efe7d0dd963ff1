"""Text hygiene for what the bot reads out: mentions become names, custom emoji their names, links
"link", runs of a repeated character are capped, whitespace collapsed; length checks and block quotes.

Nothing here knows Discord: the cog says how to name a mention (:class:`MentionNames`) from the guild
data it has. Errors are :class:`~bot.errors.UserFacingError` (one sentence).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.errors import UserFacingError
from bot.text import escape_markdown

RUN_CAP = 3  # longest run of one repeated (non-digit) character kept


@dataclass(frozen=True, slots=True)
class MentionNames:
    """How to name what a mention points at (the cog fills these from the guild data it has).

    Each callable returns a display name, or None when it is unknown.
    """

    user: Callable[[int], str | None] = lambda _id: None
    role: Callable[[int], str | None] = lambda _id: None
    channel: Callable[[int], str | None] = lambda _id: None


_USER_MENTION = re.compile(r"<@!?(\d{1,25})>")  # any id: Discord renders them all as mentions
_ROLE_MENTION = re.compile(r"<@&(\d{1,25})>")
_CHANNEL_MENTION = re.compile(r"<#(\d{1,25})>")
_COMMAND_MENTION = re.compile(r"</([\w -]{1,100}):\d{15,21}>")
_TIMESTAMP = re.compile(r"<t:(-?\d{1,13})(?::[tTdDfFRsS])?>")
_GUILD_NAV = re.compile(r"<id:(?:customize|browse|guide|linked-roles)(?::\d+)?>")
_CUSTOM_EMOJI = re.compile(r"<a?:(\w{1,32}):\d{15,21}>")
CLEAN_ROUNDS = 4  # rounds of the cleaning chain; real text settles in one or two
_EVERYONE = re.compile(r"@+(everyone|here)\b")  # "@@everyone" too: no raw mention survives
_MASKED_LINK = re.compile(r"\[([^\]\n]{1,256})\]\(\s*<?(?:https?://|www\.)[^)\s]*>?\s*\)", re.IGNORECASE)
_URL = re.compile(r"<?(?:(?:https?|ftp)://|www\.)[^\s<>]+>?", re.IGNORECASE)
_LINE_MARKUP = re.compile(r"^\s*(?:>>> |> |-# |#{1,3} )", re.MULTILINE)
_INLINE_MARKUP = re.compile(r"```[a-zA-Z0-9_+-]*\n?|```|\*\*|__|~~|\|\||`")
_RUN = re.compile(rf"([^\d\s])\1{{{RUN_CAP},}}")
_SPACE = re.compile(r"\s+")


def clean_text(text: str, names: MentionNames | None = None) -> str:
    """Text as it should be spoken: mentions → ``@name``/``#channel``, ``@everyone``/``@here`` →
    "everyone"/"here", custom emoji → their names, links → "link", markdown markers dropped, runs of
    one repeated character capped at :data:`RUN_CAP` (digits are left alone), control and
    zero-width characters removed, whitespace collapsed. May return an empty string."""
    names = names or MentionNames()

    def user(match: re.Match[str]) -> str:
        name = names.user(int(match.group(1)))
        return f"@{name}" if name else "someone"

    def role(match: re.Match[str]) -> str:
        name = names.role(int(match.group(1)))
        return f"@{name}" if name else "a role"

    def channel(match: re.Match[str]) -> str:
        name = names.channel(int(match.group(1)))
        return f"#{name}" if name else "a channel"

    def timestamp(match: re.Match[str]) -> str:
        try:
            when = datetime.fromtimestamp(int(match.group(1)), UTC)
        except (OverflowError, OSError, ValueError):
            return "a date"
        return f" {when.day} {when:%B %Y} "

    text = _strip_invisible(text)
    # Each rule can uncover a pattern an earlier one already passed ("@**@everyone" loses its "**" and
    # becomes "@everyone"), so the whole chain runs until nothing changes (a few rounds at most).
    for _ in range(CLEAN_ROUNDS):
        before = text
        text = _ROLE_MENTION.sub(role, text)
        text = _USER_MENTION.sub(user, text)
        text = _CHANNEL_MENTION.sub(channel, text)
        text = _COMMAND_MENTION.sub(lambda m: f"/{m.group(1)}", text)
        text = _TIMESTAMP.sub(timestamp, text)
        text = _GUILD_NAV.sub("a server page", text)
        text = _CUSTOM_EMOJI.sub(lambda m: f" {m.group(1).replace('_', ' ')} ", text)
        text = _EVERYONE.sub(lambda m: m.group(1), text)
        text = _MASKED_LINK.sub(lambda m: m.group(1), text)
        text = _URL.sub("link", text)
        text = _LINE_MARKUP.sub("", text)
        text = _INLINE_MARKUP.sub("", text)
        text = _SPACE.sub(" ", text).strip()
        text = _RUN.sub(lambda m: m.group(1) * RUN_CAP, text)
        if text == before:
            break
    else:  # still changing after CLEAN_ROUNDS: a last pass of the mention rules alone, which nothing undoes
        text = _ROLE_MENTION.sub(role, _USER_MENTION.sub(user, _CHANNEL_MENTION.sub(channel, text)))
        text = _EVERYONE.sub(lambda m: m.group(1), text)
    return text


def mentioned_user_ids(text: str) -> list[int]:
    """The user ids mentioned in ``text`` that could be real (snowflake-sized), in order of first appearance."""
    return list(dict.fromkeys(int(m) for m in _USER_MENTION.findall(text or "") if 15 <= len(m) <= 21))


def _strip_invisible(text: str) -> str:
    """Drop control/format characters (zero-width, bidi overrides) and pile-ups of combining marks."""
    out: list[str] = []
    marks = 0
    for ch in unicodedata.normalize("NFC", text):
        category = unicodedata.category(ch)
        if ch in "\n\t\r":
            out.append("\n" if ch == "\n" else " ")
            marks = 0
        elif category in ("Cc", "Cf", "Co", "Cs"):
            continue
        elif category.startswith("M") and category != "Mc":
            marks += 1
            if marks <= 2:  # accents stay; "zalgo" stacks go
                out.append(ch)
        else:
            marks = 0
            out.append(ch)
    return "".join(out)


def check_length(text: str, limit: int, *, what: str = "text") -> None:
    """Refuse text longer than ``limit`` characters, stating both numbers."""
    if len(text) > limit:
        raise UserFacingError(f"That {what} is {len(text):,} characters; the limit is {limit:,}.")


def prepare_text(text: str, limit: int, names: MentionNames | None = None, *, what: str = "text") -> str:
    """Length check on the user's own text, then :func:`clean_text`; refuses what has nothing to say."""
    check_length(text, limit, what=what)
    cleaned = clean_text(text, names)
    if len(cleaned) > limit:  # mentions, dates and emoji spelled out can make it longer than typed
        raise UserFacingError(
            f"That {what} grows to {len(cleaned):,} characters once mentions, dates and emoji are spelled out; "
            f"the limit is {limit:,}."
        )
    if not any(ch.isalnum() for ch in cleaned):
        if what == "message":
            raise UserFacingError("That message has nothing I can read out (no words after removing links, "
                                  "mentions and formatting).")
        raise UserFacingError("There is nothing to say out loud in that text; add some words.")
    return cleaned


def quote_text(text: str, max_chars: int) -> str:
    """``text`` as a Discord block quote of at most ``max_chars`` characters (markdown shown literally)."""
    def render(body: str) -> str:
        return "> " + escape_markdown(body)

    quoted = render(text)
    if len(quoted) <= max_chars:
        return quoted
    low, high = 0, len(text)
    while low < high:  # the longest prefix whose escaped form fits with the ellipsis
        mid = (low + high + 1) // 2
        if len(render(text[:mid].rstrip() + "…")) <= max_chars:
            low = mid
        else:
            high = mid - 1
    return render(text[:low].rstrip() + "…")


__all__ = [
    "RUN_CAP",
    "MentionNames",
    "check_length",
    "clean_text",
    "mentioned_user_ids",
    "prepare_text",
    "quote_text",
]
