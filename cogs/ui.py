"""The views and modals every cog builds on.

Application commands and autocomplete pass the command tree's check (:meth:`bot.app.NanoVoice.admit`:
the owner's blocks, ``ALLOWED_GUILD_IDS``); buttons, selects and modal submits go from discord.py
straight to their view or modal, so :class:`View` and :class:`Modal` ask the same check first. Every
view and modal in ``cogs/`` derives from one of them, and errors in their callbacks reach the user as
one sentence (:func:`bot.interactions.report_error`).

- :class:`View`: the check and the error handler.
- :class:`AuthorOnlyView`: only the user who ran the command may press; closes its buttons on timeout.
- :class:`ConfirmView`: Confirm/Cancel, answered once.
- :class:`PagesView`: Previous/Next through a list of embeds.
- :class:`Modal`: the check and the error handler for modals.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from bot import interactions
from bot.app import nanovoice_of
from bot.errors import UserFacingError

log = logging.getLogger(__name__)

VIEW_TIMEOUT = 300.0
NOT_YOURS = "Only the person who ran this command can use these buttons."
ALREADY_ANSWERED = "This was already confirmed or cancelled."


class View(discord.ui.View):
    """A view whose buttons blocked users and servers the bot may not serve can't use."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await nanovoice_of(interaction.client).admit(interaction)

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]) -> None:
        await interactions.report_error(interaction, error)


class Modal(discord.ui.Modal):
    """A modal that blocked users and servers the bot may not serve can't submit."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await nanovoice_of(interaction.client).admit(interaction)

    async def on_error(self, interaction: discord.Interaction, error: Exception,
                       _item: discord.ui.Item[Any] | None = None) -> None:
        # Modal calls this with two arguments; the optional third keeps the signature of the View base
        # class that discord.py's Modal shares.
        await interactions.report_error(interaction, error)


class AuthorOnlyView(View):
    """Buttons only the user who ran the command (``origin``) may press; closed when they time out.

    On timeout the buttons are removed and, when ``expired_text`` is set, the message says so."""

    expired_text: str | None = None

    def __init__(self, origin: discord.Interaction, *, timeout: float = VIEW_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        self.origin = origin

    def not_yours_text(self) -> str:
        """What someone else pressing a button is told."""
        return NOT_YOURS

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if not await super().interaction_check(interaction):
            return False
        if interaction.user.id == self.origin.user.id:
            return True
        await interaction.response.send_message(self.not_yours_text(), ephemeral=True,
                                                allowed_mentions=interactions.NO_PINGS)
        return False

    async def on_timeout(self) -> None:
        changes: dict[str, object] = {"view": None}
        if self.expired_text is not None:
            changes.update(content=self.expired_text, embed=None)
        try:
            await interactions.edit_original(self.origin, **changes)
        except discord.HTTPException:
            log.info("could not close the buttons of interaction %s", self.origin.id, exc_info=True)


class ConfirmView(AuthorOnlyView):
    """Confirm/Cancel, answered once: a second press (one that raced the first) is turned away.

    Subclasses say what the buttons do (:meth:`confirmed`, :meth:`cancelled`); the view has stopped
    by then."""

    already_answered_text = ALREADY_ANSWERED

    def __init__(self, origin: discord.Interaction, *, confirm_label: str = "Confirm",
                 confirm_style: discord.ButtonStyle = discord.ButtonStyle.danger,
                 timeout: float = VIEW_TIMEOUT) -> None:
        super().__init__(origin, timeout=timeout)
        self.answered = False
        self.confirm.label = confirm_label
        self.confirm.style = confirm_style

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if not await super().interaction_check(interaction):
            return False
        if self.answered:
            await interaction.response.send_message(self.already_answered_text, ephemeral=True,
                                                    allowed_mentions=interactions.NO_PINGS)
            return False
        self.answered = True
        return True

    async def confirmed(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    async def cancelled(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    def disable_buttons(self) -> None:
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        await self.confirmed(interaction)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        await self.cancelled(interaction)


class ConfirmDeleteView(ConfirmView):
    """Confirm/Cancel for a deletion: ``action`` runs on Confirm and returns the text to show."""

    expired_text = "No answer within 5 minutes: nothing was deleted."

    def __init__(self, origin: discord.Interaction, action: Callable[[], Awaitable[str]], *, confirm_label: str,
                 cancelled_text: str) -> None:
        super().__init__(origin, confirm_label=confirm_label)
        self.action = action
        self.cancelled_text = cancelled_text

    async def confirmed(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(content="Deleting…", embed=None, view=None)
        try:
            text = await self.action()
        except UserFacingError as exc:
            text = str(exc)
        await interactions.edit_original(interaction, content=text, embed=None, view=None)

    async def cancelled(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(content=self.cancelled_text, embed=None, view=None)


class PagesView(AuthorOnlyView):
    """Previous/Next through ``pages``."""

    def __init__(self, origin: discord.Interaction, pages: list[discord.Embed]) -> None:
        super().__init__(origin)
        self.pages = pages
        self.page = 0
        self._sync()

    def _sync(self) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= len(self.pages) - 1

    async def _show(self, interaction: discord.Interaction, page: int) -> None:
        self.page = max(0, min(page, len(self.pages) - 1))
        self._sync()
        await interaction.response.edit_message(embed=self.pages[self.page], view=self)

    @discord.ui.button(label="Previous", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page - 1)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page + 1)
