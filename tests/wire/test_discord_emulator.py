"""The Discord emulator proven with a real discord.py bot (defined here, independent of nanovoice's bot)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.conftest import NetworkAccessBlocked, NetworkGuard
from tests.fakes.discord import MANAGE_GUILD, DiscordEmulator
from tests.harness import LogCapture, start_client, stop_client

OGG_BYTES = b"OggS" + bytes(range(256)) * 4
WAVEFORM = base64.b64encode(bytes([0, 40, 120, 255, 90, 10] * 5)).decode()


# ------------------------------------------------------------------------------------------ the test bot


class CounterView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=30)
        self.count = 0

    @discord.ui.button(label="+1", style=discord.ButtonStyle.primary, custom_id="counter:inc")
    async def increment(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.count += 1
        await interaction.response.edit_message(content=f"count {self.count}", view=self)


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    name = discord.ui.TextInput(label="Name", custom_id="feedback:name", max_length=20)
    text = discord.ui.Label(text="Your feedback", component=discord.ui.TextInput(
        custom_id="feedback:text", style=discord.TextStyle.paragraph))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        assert isinstance(self.text.component, discord.ui.TextInput)
        await interaction.response.send_message(f"thanks {self.name.value}: {self.text.component.value}",
                                                ephemeral=True)


class EmulatorTestBot(commands.Bot):
    def __init__(self, guild_id: int) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
        self.test_guild = discord.Object(guild_id)
        self.app_errors: list[BaseException] = []
        self.gate = asyncio.Event()
        self.tree.on_error = self._record_error  # type: ignore[method-assign]

    async def _record_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.app_errors.append(error)

    async def setup_hook(self) -> None:
        voice = app_commands.Group(name="voice", description="Voices")
        admin = app_commands.Group(name="admin", description="Admin", parent=voice)

        @voice.command(name="clone", description="Clone a voice")
        async def clone(interaction: discord.Interaction, audio: discord.Attachment, name: str) -> None:
            await interaction.response.defer(thinking=True)
            data = await audio.read()
            await interaction.followup.send(f"cloned {name} from {audio.filename} ({len(data)} bytes)",
                                            file=discord.File(io.BytesIO(data), f"copy-{audio.filename}"))

        @admin.command(name="reset", description="Reset")
        async def reset(interaction: discord.Interaction, confirm: bool) -> None:
            allowed = interaction.permissions.manage_guild
            await interaction.response.send_message(f"reset {confirm} {'done' if allowed else 'denied'}",
                                                    ephemeral=True)

        @app_commands.command(name="ping", description="Ping")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong", ephemeral=True)

        async def voice_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            names = ["alice-voice", "bob-voice", "Kokoro-82m/af_bella"]
            return [app_commands.Choice(name=n, value=n) for n in names if current.lower() in n.lower()]

        @app_commands.command(name="say", description="Say")
        @app_commands.autocomplete(voice=voice_names)
        async def say(interaction: discord.Interaction, text: str, voice: str | None = None,
                      speed: app_commands.Range[float, 0.5, 2.0] = 1.0) -> None:
            await interaction.response.send_message(f"> {text} ({voice}, {speed})",
                                                    allowed_mentions=discord.AllowedMentions.none())

        @app_commands.command(name="counter", description="Counter")
        async def counter(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("count 0", view=CounterView())

        @app_commands.command(name="feedback", description="Feedback")
        async def feedback(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(FeedbackModal())

        @app_commands.command(name="slow", description="Answers after the gate opens")
        async def slow(interaction: discord.Interaction) -> None:
            await self.gate.wait()
            await interaction.response.send_message("late")

        @app_commands.context_menu(name="Clone this voice")
        async def clone_this_voice(interaction: discord.Interaction, message: discord.Message) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            att = message.attachments[0]
            data = await att.read()
            await interaction.followup.send(
                f"{att.filename} voice={att.is_voice_message()} duration={att.duration} bytes={len(data)}",
                ephemeral=True)

        for cmd in (voice, ping, say, counter, feedback, slow, clone_this_voice):
            self.tree.add_command(cmd)
        self.tree.copy_global_to(guild=self.test_guild)
        await self.tree.sync(guild=self.test_guild)
        await self.tree.sync()


@pytest.fixture
async def bot(discord_emulator: DiscordEmulator) -> AsyncIterator[EmulatorTestBot]:
    client = EmulatorTestBot(discord_emulator.guild_id)
    await start_client(client, discord_emulator)
    try:
        yield client
    finally:
        await stop_client(client)
    assert not client.app_errors, client.app_errors


class VoiceFile(discord.File):
    """A discord.File whose attachment entry carries the voice-message metadata."""

    def __init__(self, fp: io.BytesIO, filename: str, *, duration: float, waveform: str) -> None:
        super().__init__(fp, filename)
        self.duration, self.waveform = duration, waveform

    def to_dict(self, index: int) -> dict[str, Any]:
        return {**super().to_dict(index), "duration_secs": self.duration, "waveform": self.waveform}


def voice_params(data: bytes = OGG_BYTES, *, content_type: str = "audio/ogg", waveform: str | None = WAVEFORM,
                 content: str | None = None) -> discord.http.MultipartParameters:
    if waveform is None:
        file: discord.File = discord.File(io.BytesIO(data), "voice-message.ogg")
    else:
        file = VoiceFile(io.BytesIO(data), "voice-message.ogg", duration=2.5, waveform=waveform)
    params = discord.http.handle_message_parameters(content=content, file=file,
                                                    flags=discord.MessageFlags(voice=True))
    files_part = next(p for p in params.multipart if p["name"] == "files[0]")
    files_part["content_type"] = content_type
    return params


# ------------------------------------------------------------------------------------------ tests


async def test_login_gateway_and_command_sync(bot: EmulatorTestBot, discord_emulator: DiscordEmulator,
                                              captured_logs: LogCapture) -> None:
    emu = discord_emulator
    assert bot.user is not None and bot.user.id == emu.bot_user_id
    assert bot.application_id == emu.application_id
    guild = bot.get_guild(emu.guild_id)
    assert guild is not None and guild.me is not None
    assert guild.default_role.id == emu.guild_id
    assert isinstance(bot.get_channel(emu.channel_id), discord.TextChannel)
    assert emu.find_requests("GET", r"^/users/@me$") and emu.find_requests("GET", r"^/oauth2/applications/@me$")
    assert emu.global_sync_count == 1 and emu.guild_sync_count() == 1
    names = {c["name"] for c in emu.guild_commands[emu.guild_id]}
    assert names == {"voice", "ping", "say", "counter", "feedback", "slow", "Clone this voice"}
    voice = emu.find_command("voice")
    assert voice["guild_id"] == str(emu.guild_id) and voice["id"] and voice["version"]
    group = next(o for o in voice["options"] if o["name"] == "admin")
    assert group["type"] == 2 and group["options"][0]["type"] == 1
    assert emu.identify_count == 1
    assert all(r.headers.get("Content-Type") != "x" for r in emu.requests)
    captured_logs.assert_no_errors()
    assert not captured_logs.leaks(emu.token)


async def test_wrong_token_is_a_login_failure(discord_emulator: DiscordEmulator) -> None:
    client = discord.Client(intents=discord.Intents.none())
    discord.http.Route.BASE = discord_emulator.api_base
    try:
        with pytest.raises(discord.LoginFailure):
            await client.login("not-the-token")
    finally:
        await client.close()


async def test_slash_defer_then_file_followup(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    alice = emu.add_user(name="alice")
    audio = emu.add_attachment(b"ID3" + b"\x00" * 2000, "sample.mp3", "audio/mpeg")
    inter = await emu.slash(alice, "voice", subcommand="clone", options={"name": "Ann"}, attachments={"audio": audio})

    message = await inter.wait_final()
    assert inter.callback == {"type": 5}
    assert message.id == inter.original_message_id and not message.ephemeral
    assert message.content == "cloned Ann from sample.mp3 (2003 bytes)"
    [file] = message.files
    assert file.filename == "copy-sample.mp3" and file.data == b"ID3" + b"\x00" * 2000
    assert inter.followups == []  # the first followup after a defer replaced the "thinking…" message

    callback = emu.find_requests("POST", rf"^/interactions/{inter.id}/.+/callback$")[0]
    assert callback.query == {"with_response": "1"} and "Authorization" not in callback.headers
    followup = await emu.wait_for_request("POST", rf"^/webhooks/{emu.application_id}/")
    assert followup.query["wait"] == "1"
    assert followup.payload["attachments"] == [{"id": 0, "filename": "copy-sample.mp3"}]
    assert followup.files[0].content_type == "application/octet-stream"
    assert emu.find_requests("GET", r"^/cdn/attachments/")  # the bot downloaded the upload from the CDN
    assert [m.id for m in emu.channel_messages()] == [message.id]


async def test_subcommand_group_sees_member_permissions(bot: EmulatorTestBot,
                                                        discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    bob = emu.add_user(name="bob")
    first = await emu.slash(bob, "voice", subcommand="admin reset", options={"confirm": True})
    assert (await first.wait_final()).content == "reset True denied"
    assert first.payload["data"]["options"] == [{"name": "admin", "type": 2, "options": [
        {"name": "reset", "type": 1, "options": [{"name": "confirm", "type": 5, "value": True}]}]}]

    emu.set_member_permissions(bob, MANAGE_GUILD | (1 << 10) | (1 << 11))
    second = await emu.slash(bob, "voice", subcommand="admin reset", options={"confirm": False})
    assert (await second.wait_final()).content == "reset False done"
    assert second.payload["member"]["permissions"] == str(MANAGE_GUILD | (1 << 10) | (1 << 11))


async def test_ephemeral_reply_is_not_in_the_channel(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    inter = await emu.slash(emu.add_user(name="carol"), "ping")
    message = await inter.wait_final()
    assert message.content == "pong" and message.ephemeral
    assert emu.channel_messages() == [] and emu.channel_messages(include_ephemeral=True) == [message]


async def test_options_take_their_types_from_the_synced_definition(bot: EmulatorTestBot,
                                                                   discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    dave = emu.add_user(name="dave")
    inter = await emu.slash(dave, "say", options={"text": f"hi {dave.mention}", "voice": "bob-voice", "speed": 1.5})
    message = await inter.wait_final()
    assert message.content == f"> hi {dave.mention} (bob-voice, 1.5)"
    assert message.allowed_mentions == {"parse": []} and message.pinged_user_ids == []
    assert {o["name"]: o["type"] for o in inter.payload["data"]["options"]} == {"text": 3, "voice": 3, "speed": 10}
    with pytest.raises(ValueError, match="outside"):
        await emu.slash(dave, "say", options={"text": "x", "speed": 3.0})
    with pytest.raises(ValueError, match="required"):
        await emu.slash(dave, "say", options={"speed": 1.0})
    with pytest.raises(LookupError, match="not synced"):
        await emu.slash(dave, "nope")


async def test_autocomplete_returns_the_bots_choices(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    choices = await emu.autocomplete(emu.add_user(name="erin"), "say", options={"text": "hello", "voice": "ali"},
                                     focused="voice")
    assert choices == [{"name": "alice-voice", "value": "alice-voice"}]
    assert await emu.autocomplete(emu.add_user(name="fay"), "say", focused="voice") == [
        {"name": n, "value": n} for n in ["alice-voice", "bob-voice", "Kokoro-82m/af_bella"]]


async def test_button_click_edits_the_message(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    gus = emu.add_user(name="gus")
    inter = await emu.slash(gus, "counter")
    message = await inter.wait_final()
    assert message.custom_ids() == ["counter:inc"]
    for expected in ("count 1", "count 2"):
        click = await emu.click(gus, message, "counter:inc")
        assert (await click.wait_response())["type"] == 7
        assert emu.messages[message.id].content == expected
    assert click.payload["message"]["id"] == str(message.id)
    assert len(emu.messages[message.id].history) == 2


async def test_modal_round_trip(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    hal = emu.add_user(name="hal")
    inter = await emu.slash(hal, "feedback")
    assert (await inter.wait_response())["type"] == 9
    modal = emu.last_modal(inter.token)
    assert modal is not None and modal["title"] == "Feedback"
    submit = await emu.submit_modal(hal, modal["custom_id"], {"feedback:name": "Hal", "feedback:text": "great bot"})
    reply = await submit.wait_final()
    assert reply.content == "thanks Hal: great bot" and reply.ephemeral
    assert [c["type"] for c in submit.payload["data"]["components"]] == [1, 18]
    with pytest.raises(KeyError, match="no fields"):
        await emu.submit_modal(hal, modal["custom_id"], {"feedback:nope": "x"})


async def test_message_context_menu_on_a_voice_message(bot: EmulatorTestBot,
                                                       discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    ivy = emu.add_user(name="ivy")
    voice = emu.add_attachment(OGG_BYTES, "voice-message.ogg", "audio/ogg", duration_secs=2.5, waveform=WAVEFORM)
    target = await emu.create_user_message(emu.channel_id, ivy, attachments=[voice], flags=8192)
    inter = await emu.message_context(ivy, "Clone this voice", target)
    reply = await inter.wait_final()
    assert reply.content == f"voice-message.ogg voice=True duration=2.5 bytes={len(OGG_BYTES)}"
    assert reply.ephemeral
    assert inter.payload["data"]["target_id"] == str(target.id)


async def test_channel_message_with_file(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    channel = bot.get_channel(emu.channel_id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("report", file=discord.File(io.BytesIO(b"a,b\n1,2\n"), "report.csv"))
    stored = emu.messages[sent.id]
    assert stored.source == "channel" and stored.content == "report" and not stored.webhook
    assert stored.files[0].data == b"a,b\n1,2\n" and stored.attachments[0]["content_type"] == "text/csv"
    assert await sent.attachments[0].read() == b"a,b\n1,2\n"
    edited = await sent.edit(content="report v2")
    assert edited.content == "report v2" and emu.messages[sent.id].files[0].data == b"a,b\n1,2\n"
    await sent.delete()
    assert sent.id not in emu.messages and emu.channel_messages() == []


async def test_voice_message_through_discord_py_http(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    data = await bot.http.send_message(emu.channel_id, params=voice_params())
    message = emu.messages[int(data["id"])]
    assert message.is_voice_message and message.content == ""
    [att] = message.attachments
    assert att["duration_secs"] == 2.5 and att["waveform"] == WAVEFORM and att["content_type"] == "audio/ogg"
    assert message.files[0].data == OGG_BYTES
    with pytest.raises(discord.HTTPException) as edit:
        await bot.http.edit_message(emu.channel_id, message.id, params=discord.http.handle_message_parameters(
            content="no"))
    assert edit.value.code == 50162

    for params, code in [(voice_params(content_type="application/octet-stream"), 50161),
                         (voice_params(waveform=None), 50161),
                         (voice_params(content="hello"), 50159)]:
        with pytest.raises(discord.HTTPException) as bad:
            await bot.http.send_message(emu.channel_id, params=params)
        assert bad.value.status == 400 and bad.value.code == code


async def test_voice_message_refused_in_channel(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    emu.refuse_voice_messages[emu.channel_id] = True
    with pytest.raises(discord.Forbidden) as refused:
        await bot.http.send_message(emu.channel_id, params=voice_params())
    assert refused.value.code == 50173 and "voice messages" in refused.value.text
    assert emu.channel_messages() == []


async def test_callback_after_three_seconds_is_unknown_interaction(bot: EmulatorTestBot,
                                                                   discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    inter = await emu.slash(emu.add_user(name="jo"), "slow")
    emu.clock_offset = 3.5
    bot.gate.set()
    request = await emu.wait_for_request("POST", rf"^/interactions/{inter.id}/")
    assert request.status == 404 and request.response == {"message": "Unknown interaction", "code": 10062}
    await emu.wait_until(lambda: bool(bot.app_errors))
    error = bot.app_errors.pop()
    assert isinstance(error, app_commands.CommandInvokeError) and isinstance(error.original, discord.NotFound)
    assert error.original.code == 10062 and not inter.responded


async def test_second_callback_and_expired_token_raw(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    inter = await emu.slash(emu.add_user(name="kim"), "ping")
    await inter.wait_final()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{emu.api_base}/interactions/{inter.id}/{inter.token}/callback",
                             json={"type": 4, "data": {"content": "again"}}) as resp:
            assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["code"] == 40060
        webhook = f"{emu.api_base}/webhooks/{emu.application_id}/{inter.token}"
        async with http.post(f"{webhook}?wait=1", json={"content": "followup"}) as resp:
            assert resp.status == 200
        emu.clock_offset = 15 * 60 + 1
        async with http.post(f"{webhook}?wait=1", json={"content": "too late"}) as resp:
            assert resp.status == 401 and (await resp.json())["code"] == 50027
        async with http.get(f"{emu.api_base}/no/such/route") as resp:
            assert resp.status == 404 and resp.headers["Content-Type"] == "application/json"
    assert [r.path for r in emu.unknown_routes] == ["/no/such/route"]
    emu.unknown_routes.clear()
    assert [m.content for m in inter.followups] == ["followup"]


async def test_gateway_disconnect_resumes_and_replays(bot: EmulatorTestBot, discord_emulator: DiscordEmulator,
                                                      captured_logs: LogCapture) -> None:
    emu = discord_emulator
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()
    bot.add_listener(on_resumed)
    await emu.disconnect_gateway(code=4000)
    # sent while the bot is away: buffered and replayed on RESUME, as Discord does
    inter = await emu.slash(emu.add_user(name="lee"), "ping")
    assert (await inter.wait_final()).content == "pong"
    await asyncio.wait_for(resumed.wait(), 5)
    assert emu.resume_count == 1 and emu.identify_count == 1

    await emu.disconnect_gateway(code=None)  # TCP drop without a close frame
    await emu.wait_until(lambda: emu.resume_count == 2)
    again = await emu.slash(emu.add_user(name="max"), "ping")
    assert (await again.wait_final()).content == "pong"
    captured_logs.assert_no_errors()


async def test_rate_limit_fault_is_retried(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    emu.fail_next("POST", r"^/channels/\d+/messages$", 429, {"message": "You are being rate limited.",
                                                             "retry_after": 0.01, "global": False})
    channel = bot.get_channel(emu.channel_id)
    assert isinstance(channel, discord.TextChannel)
    since = emu.mark()
    await channel.send("after a 429")
    posts = emu.find_requests("POST", r"^/channels/\d+/messages$", since=since)
    assert [(r.status, r.faulted) for r in posts] == [(429, True), (200, False)]
    assert posts[0].status == 429
    emu.fail_next("POST", r"^/channels/\d+/messages$", 404, {"message": "Unknown Channel", "code": 10003})
    with pytest.raises(discord.NotFound):
        await channel.send("lost")


async def test_network_guard_fails_fast(network_guard: NetworkGuard) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(NetworkAccessBlocked):
            await http.get("https://discord.com/api/v10/gateway")
        with pytest.raises((NetworkAccessBlocked, aiohttp.ClientConnectorError)):
            await http.get("http://162.159.128.233/")
    assert time.monotonic() - started < 1
    assert len(network_guard.clear()) == 2


async def test_voice_message_as_initial_callback_raw(bot: EmulatorTestBot, discord_emulator: DiscordEmulator) -> None:
    emu = discord_emulator
    bot.gate.clear()  # /slow waits, so the test answers the interaction itself
    inter = await emu.slash(emu.add_user(name="nia"), "slow")
    payload = {"type": 4, "data": {"flags": 8192, "attachments": [
        {"id": 0, "filename": "voice-message.ogg", "duration_secs": 2.5, "waveform": WAVEFORM}]}}
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", discord.utils._to_json(payload))
    form.add_field("files[0]", OGG_BYTES, filename="voice-message.ogg", content_type="audio/ogg")
    async with aiohttp.ClientSession() as http:
        url = f"{emu.api_base}/interactions/{inter.id}/{inter.token}/callback?with_response=1"
        async with http.post(url, data=form) as resp:
            assert resp.status == 200
            answer = await resp.json()
    assert answer["resource"]["message"]["flags"] == 8192
    original = inter.original
    assert original is not None and original.is_voice_message and original.files[0].data == OGG_BYTES
    bot.gate.set()  # the bot's own late answer now fails with 40060
    await emu.wait_until(lambda: bool(bot.app_errors))
    error = bot.app_errors.pop()
    assert isinstance(error, app_commands.CommandInvokeError) and getattr(error.original, "code", None) == 40060
