"""One way to answer an interaction, whatever state it is in.

``send`` picks the initial response, a followup, or (once the 15-minute token is gone) a message in
the channel, so no command is ever left at "thinking…". Cogs use it instead of choosing themselves.

``defer`` records whether a public "thinking…" placeholder is showing, so ``send_error`` can keep an
error private: it removes that placeholder and answers ephemerally instead of replacing it in public.

``report_error`` turns any failure of a command, button or modal into that one private sentence;
``refuse`` answers an interaction the gate turned away (:meth:`bot.app.NanoVoice.admit`).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import discord
from discord import app_commands

from bot.errors import UserFacingError
from bot.nanogpt import NanoGPTError

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
PUBLIC_PLACEHOLDER = "nanovoice.public_placeholder"  # key in Interaction.extras
EXPIRED_INTERACTION_CODES = {10062, 10015}  # Unknown interaction, Unknown webhook


def guild_id_of(interaction: discord.Interaction) -> int:
    """The server of an interaction with a guild-only command (Discord offers those in servers only)."""
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    return interaction.guild_id


def channel_id_of(interaction: discord.Interaction) -> int:
    """The channel an interaction came from (Discord sends one with every command)."""
    if interaction.channel_id is None:
        raise RuntimeError(f"Discord sent interaction {interaction.id} without a channel")
    return interaction.channel_id


async def defer(interaction: discord.Interaction, *, ephemeral: bool = False) -> None:
    """Defer with "thinking…"; remembers a public placeholder for :func:`send_error`."""
    await interaction.response.defer(thinking=True, ephemeral=ephemeral)
    interaction.extras[PUBLIC_PLACEHOLDER] = not ephemeral


def placeholder_replaced(interaction: discord.Interaction) -> None:
    """The public "thinking…" message is gone or became the real answer."""
    interaction.extras[PUBLIC_PLACEHOLDER] = False


async def send_error(interaction: discord.Interaction, content: str) -> None:
    """Tell only the user what went wrong, even after a public defer."""
    if interaction.extras.get(PUBLIC_PLACEHOLDER):
        try:
            await interaction.delete_original_response()
            placeholder_replaced(interaction)
        except discord.HTTPException:
            log.info("could not remove the placeholder of interaction %s; answering in it", interaction.id)
    await send(interaction, content, ephemeral=True)


async def send(
    interaction: discord.Interaction,
    content: str | None = None,
    *,
    ephemeral: bool = True,
    **kwargs: Any,
) -> discord.Message | None:
    """Answer ``interaction``; returns the message when Discord gives one back."""
    kwargs.setdefault("allowed_mentions", NO_PINGS)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(content, ephemeral=ephemeral, **kwargs)
            return None
        # discord.py types followup content as str, but it accepts None (sent as null) as send_message does.
        message = await interaction.followup.send(content, ephemeral=ephemeral, wait=True,  # type: ignore[call-overload]
                                                  **kwargs)
        placeholder_replaced(interaction)  # the first followup after a defer replaces the placeholder
        return message
    except discord.NotFound:
        # The interaction expired (10062/10015): fall back to the channel, mentioning only the user.
        channel = interaction.channel
        if channel is None or not hasattr(channel, "send"):
            log.warning("interaction %s expired and its channel is unknown; answer dropped", interaction.id)
            return None
        kwargs.pop("ephemeral", None)
        text = f"{interaction.user.mention} {content}" if content else interaction.user.mention
        return await channel.send(
            text, allowed_mentions=discord.AllowedMentions(users=[interaction.user]),
            **{k: v for k, v in kwargs.items() if k != "allowed_mentions"},
        )


async def edit_original(interaction: discord.Interaction, **kwargs: Any) -> discord.Message | None:
    """Edit the original response, tolerating an expired token (returns None then)."""
    kwargs.setdefault("allowed_mentions", NO_PINGS)
    try:
        message = await interaction.edit_original_response(**kwargs)
        placeholder_replaced(interaction)
        return message
    except discord.NotFound:
        log.info("original response of interaction %s is gone; edit skipped", interaction.id)
        return None


async def refuse(interaction: discord.Interaction, message: str) -> None:
    """Answer a refused interaction with one private sentence (autocomplete: no choices), and nothing else."""
    log.info("refused interaction %s (type %s) from user %s in guild %s: %s", interaction.id,
             interaction.type.value, interaction.user.id, interaction.guild_id, message)
    try:
        if interaction.type is discord.InteractionType.autocomplete:
            await interaction.response.autocomplete([])
        else:
            await send_error(interaction, message)
    except discord.HTTPException:
        log.warning("could not deliver a refusal for interaction %s", interaction.id, exc_info=True)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the user what went wrong in one sentence; log unexpected errors with an id."""
    original = getattr(error, "original", error)
    if interaction.client.is_closed():
        # Shutting down: the session and the gateway are gone, so this is no bug and nobody can be told.
        log.info("/%s was interrupted by shutdown: %s", interaction.command.qualified_name if interaction.command
                 else "?", original.__class__.__name__)
        return
    now = discord.utils.utcnow().timestamp()
    if isinstance(original, discord.NotFound) and original.code in EXPIRED_INTERACTION_CODES:
        # Discord gave up on the interaction (we were too slow, or it was already answered elsewhere):
        # nothing went wrong in the bot; the channel fallback tells the user to try again.
        log.warning("interaction %s expired before /%s could answer (Discord code %s)", interaction.id,
                    interaction.command.qualified_name if interaction.command else "?", original.code)
        message = "I couldn't answer in time; please try again."
    elif isinstance(error, app_commands.CommandOnCooldown):
        message = f"Slow down a little: you can use this again <t:{int(now + error.retry_after) + 1}:R>."
    elif isinstance(error, app_commands.MissingPermissions):
        message = "You need the Manage Server permission to do that."
    elif isinstance(error, app_commands.NoPrivateMessage):
        message = "This command only works in a server channel."
    elif isinstance(error, app_commands.CheckFailure) and not isinstance(error, app_commands.CommandInvokeError):
        message = str(error) or "You can't use this command here."
    elif isinstance(original, UserFacingError):
        message = str(original)
    elif isinstance(original, NanoGPTError):
        message = original.user_message
    else:
        error_id = secrets.token_hex(4)
        command = interaction.command.qualified_name if interaction.command else "?"
        log.error("unexpected error %s in /%s", error_id, command, exc_info=original)
        message = f"Sorry, something went wrong on my side (error id `{error_id}`)."
    try:
        await send_error(interaction, message)
    except discord.HTTPException:
        log.warning("could not deliver an error message for interaction %s", interaction.id, exc_info=True)
