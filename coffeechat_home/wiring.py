"""Building one instance's services: every store and service, constructed
once with its dependencies passed explicitly, and the hooks between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .api.auth import TokenAuth
from .config import Config
from .services.accounts import AccountService
from .services.passwords import PasswordHasher
from .storage.accounts import AccountStore
from .storage.database import Database
from .storage.rooms import RoomStore
from .storage.stream import StreamStore
from .services.notifier import Notifier
from .services.history import HistoryService
from .storage.backfill import BackfillStore
from .services.membership import MembershipService
from .services.persister import Persister
from .services.room_writer import RoomWriter
from .services.rooms import RoomService
from .storage.events import EventStore
from .protocol.signing import SigningKey
from .services.admin.tokens import RegistrationTokenService
from .services.admin.users import UserAdminService
from .storage.registration_tokens import RegistrationTokenStore
from .services.admin.room_dag import RoomDagService
from .storage.room_dag import RoomDagStore
from .services.admin.jobs import JobRunner
from .services.admin.rooms import RoomAdminService
from .storage.admin_jobs import AdminJobStore
from .storage.room_admin import RoomAdminStore
from .storage.room_purge import RoomPurgeStore
from .services.directory import DirectoryService
from .services.hierarchy import HierarchyService
from .storage.hierarchy import HierarchyStore
from .services.sync import SyncService
from .services.instances import InstanceLiveness, new_instance_id
from .storage.instances import InstanceStore
# conversation features
from .services.conversation import Conversation, build_conversation
# media repository
from .services.media import MediaService, build_media
from .services.media.remote import RemoteMedia
# end-to-end encryption
from .services.e2e import E2E, build_e2e
# federation: keys, outbound client, inbound authentication
from .services.e2e.remote_keys import RemoteKeys
from .services.federation.invites_out import OutboundInvites
from .services.federation.backfill import Backfiller
from .services.federation.resident import ResidentService
from .services.federation.server_acl import ServerAcls
from .services.federation.sender import FederationSender
from .services.federation.ephemeral import EphemeralFederation
from .storage.edu_outbox import EduOutboxStore
from .storage.federation_queue import FederationQueueStore
from .federation.client import FederationClient
from .services.federation.invites import InviteReceiver
from .services.federation.receiver import FederationReceiver
from .services.federation.remote_rooms import RemoteRooms
from .services.federation.partial_state import PartialStateResync
from .services.federation.partial_view import PartialRoomsView
from .storage.partial_state import PartialStateStore
from .storage.federation_inbound import FederationInboundStore
from .services.remote_queries import RemoteQueries
from .services.server_keys import KeyStore, LocalKeys
from .storage.server_keys import ServerKeyStore


@dataclass
class Services:
    """Everything routes may call, built once per instance. Dependencies
    are passed explicitly to each service's constructor."""

    config: Config
    db: Database
    stream: StreamStore
    notifier: Notifier
    accounts: AccountService
    auth: TokenAuth
    rooms: RoomStore
    events: EventStore
    persister: Persister
    writer: RoomWriter
    room_service: RoomService
    membership: MembershipService
    history: HistoryService
    sync: SyncService
    # conversation features: account data, receipts, typing, presence,
    # profiles, filters, push rules, user directory
    conversation: Conversation
    liveness: InstanceLiveness
    passwords: PasswordHasher
    media: MediaService
    # end-to-end encryption: keys, device lists, to-device, key backup
    e2e: E2E
    # server administration (admin API and commands)
    user_admin: UserAdminService
    token_admin: RegistrationTokenService
    jobs: JobRunner
    room_admin: RoomAdminService
    # federation
    local_keys: LocalKeys
    key_store: KeyStore
    federation_client: FederationClient
    resident: ResidentService
    federation_sender: FederationSender | None
    remote_queries: RemoteQueries
    directory: DirectoryService
    hierarchy: HierarchyService
    room_dag: RoomDagService
    receiver: FederationReceiver
    invites: InviteReceiver
    partial_state: PartialStateResync | None = None  # resync of rooms joined with a partial state


def build_services(config: Config, db: Database, signing_key: SigningKey) -> Services:
    passwords = PasswordHasher(config.security.password_scrypt_n, config.security.password_hash_concurrency)
    accounts = AccountService(
        AccountStore(db),
        passwords,
        config.server_name,
        registration_mode=config.registration.mode,
        registration_tokens=config.registration.tokens,
        token_store=RegistrationTokenStore(db),
    )
    instance_id = new_instance_id(config.instance_name)
    stream = StreamStore(db, instance_id=instance_id)
    notifier = Notifier(stream, poll_interval=config.instance_poll_ms / 1000)
    rooms = RoomStore(db)
    notifier.peer_rooms = rooms.rooms_of_users
    # conversation features
    conversation = build_conversation(config, db, stream, notifier, rooms)
    events = EventStore(db)
    persister = Persister(stream, events, notifier)
    writer = RoomWriter(persister, config.server_name, signing_key, group_commit=config.database.group_commit,
                        group_commit_transactions=config.database.group_commit_transactions)
    room_service = RoomService(
        writer, events, rooms, config.server_name, conversation.profiles.member_fields, accounts.store.user_exists
    )
    membership = MembershipService(room_service, rooms, accounts.store, config.server_name)
    accounts.deactivation_hooks.append(membership.leave_all)
    conversation.profiles.on_profile_change.append(membership.profile_changed)
    e2e = build_e2e(db, stream, notifier, rooms, accounts, config.server_name)
    sync_sources = conversation.sync_sources()
    sync_sources.extra_global.append(e2e.sync_part)
    sync_sources.limit_upto = e2e.sync_upto
    sync_sources.wake_on_room_peers = True
    jobs = JobRunner(AdminJobStore(db), instance_id)
    room_admin = RoomAdminService(
        RoomAdminStore(db), RoomPurgeStore(db), AdminJobStore(db), jobs, membership, config.server_name
    )
    fed = config.federation
    federation_client = FederationClient(
        config.server_name, signing_key,
        allow_private_addresses=fed.allow_private_addresses,
        verify_certificates=fed.verify_peer_certificates,
        timeout_s=fed.request_timeout_s,
        max_response_bytes=fed.max_response_bytes,
    )
    local_keys = LocalKeys(config.server_name, signing_key)  # old keys: loaded at start
    key_store = KeyStore(ServerKeyStore(db), local_keys, federation_client, fed.trusted_key_servers)
    remote_queries = RemoteQueries(federation_client)
    inbound = FederationInboundStore(db, stream)
    if config.federation_listener.enabled:
        remote_rooms = RemoteRooms(config.server_name, signing_key, events, persister, key_store, federation_client,
                                   inbound)
        membership.reject_remote_invite = remote_rooms.reject_invite
        membership.pending_invite = inbound.pending_invite
        membership.local_joined = lambda room_id: inbound.has_joined_member_of(room_id, config.server_name)
        membership.remote_join = remote_rooms.join
        membership.remote_alias = remote_queries.room_alias
        membership.remote_leave = remote_rooms.leave
        membership.remote_knock = remote_rooms.knock
        membership.remote_servers = lambda room_id, via: RemoteRooms.candidate_servers(
            room_id, via, config.server_name)
    # with federation off, other servers could not check our signatures (no
    # key server): their users and aliases are simply not found
    federating = config.federation_listener.enabled
    if federating:
        conversation.profiles.remote_lookup = remote_queries.profile
        e2e.keys.remote = e2e.federation.remote = RemoteKeys(
            federation_client, e2e.federation.remote_lists, config.server_name, stream.current_position)
    directory = DirectoryService(rooms, writer, config.server_name,
                                 remote_queries.room_alias if federating else None)
    if federating:  # /publicRooms?server= of another server
        directory.remote_public_rooms = lambda server, limit, since, search: remote_queries.public_rooms(
            server, limit=limit, since=since, search=search)
    media = build_media(config, db)
    if federating:  # other servers' media, fetched on first use and cached
        media.remote = RemoteMedia(federation_client, media.store, media.files, config.media, media.release_bodies)
    queue = FederationQueueStore(db, config.server_name)
    if federating:
        room_service.remote_invites = OutboundInvites(federation_client, key_store, config.server_name)
    resident = ResidentService(events, persister, writer, queue, key_store, config.server_name, signing_key)
    sender = FederationSender(
        queue, federation_client, notifier, InstanceStore(db), instance_id, outbox=EduOutboxStore(db),
        retry_min_ms=fed.destination_min_retry_ms, retry_max_ms=fed.destination_max_retry_ms,
    ) if federating else None
    if sender is not None:  # E2EE EDUs to other servers go through the sender's outbox
        persister.after_persist.append(sender.events_committed)  # (and a scan after writes maybe ours to send)
        e2e.federation.attach_sender(sender.outbox, sender.wake_all, queue.servers_sharing_a_room)
        e2e.device_lists.local_change_hooks.append(e2e.federation.local_change)
        e2e.federation.keys.announce_remote = True  # device changes write what to announce, in their transaction
        sender.sweep_hooks.append(e2e.federation.announce_pending)  # what a crash left unannounced
        e2e.to_device.remote_edus = e2e.federation.to_device_edus
        e2e.to_device.wake = sender.wake_all
    services = Services(
        config=config,
        db=db,
        stream=stream,
        notifier=notifier,
        accounts=accounts,
        auth=TokenAuth(accounts),
        rooms=rooms,
        events=events,
        persister=persister,
        writer=writer,
        room_service=room_service,
        membership=membership,
        history=(history := HistoryService(events, rooms, stream)),
        sync=SyncService(events, rooms, notifier, sync_sources, history),
        conversation=conversation,
        liveness=InstanceLiveness(InstanceStore(db), stream, notifier, config.instance_name, instance_id,
                                  wake_address=config.instance_wake_address),
        passwords=passwords,
        media=media,
        e2e=e2e,
        user_admin=UserAdminService(accounts, conversation.profiles),
        token_admin=RegistrationTokenService(RegistrationTokenStore(db)),
        jobs=jobs,
        room_admin=room_admin,
        local_keys=local_keys,
        key_store=key_store,
        federation_client=federation_client,
        resident=resident,
        federation_sender=sender,
        remote_queries=remote_queries,
        directory=directory,
        # spaces: children we are not in are asked of their via servers
        hierarchy=HierarchyService(HierarchyStore(db, config.server_name), config.server_name,
                                   remote_queries.hierarchy if federating else None),
        room_dag=RoomDagService(RoomDagStore(db)),
        receiver=FederationReceiver(
            config.server_name, events, persister, key_store, federation_client, inbound,
            conversation.typing, conversation.receipts,
        ),
        invites=InviteReceiver(
            config.server_name, signing_key, events, persister, key_store, inbound, notifier,
            accounts.store.user_exists,
        ),
    )
    services.sync.remote_invite_state = inbound.invite_state
    # unread counts leave out what the user may not see by the state at each event
    conversation.unread.hidden_events = services.history.hidden_events
    services.receiver.missing_events_limit = fed.missing_events_limit
    if config.federation_listener.enabled:  # rooms joined with a partial state: their member list afterwards
        partial_store = PartialStateStore(db)
        resync = services.partial_state = PartialStateResync(
            config.server_name, partial_store, events, services.receiver.fetcher, stream, persister,
            InstanceStore(db), instance_id, retry_ms=fed.partial_state_retry_ms,
        )
        remote_rooms.partial_state_joins = fed.partial_state_joins
        remote_rooms.partial_joined.append(resync.kick)
        services.sync.partial_rooms = PartialRoomsView(partial_store, notifier).sync_view
    if sender is not None:  # typing, receipts and presence across servers
        EphemeralFederation(
            config.server_name, EduOutboxStore(db), sender.wake, queue.allowed_servers_in_room, rooms,
            conversation.presence.store, notifier, presence_enabled=config.presence.enabled,
        ).connect(conversation.typing, conversation.receipts, conversation.presence, services.receiver)
    services.resident.acls = services.receiver.acls = services.invites.acls = ServerAcls(rooms)
    if federating:  # /messages past the oldest event we have: backfill from the room's servers
        services.history.backfill = Backfiller(
            config.server_name, events, BackfillStore(db), persister, services.receiver.fetcher, key_store,
            federation_client, queue,
        ).backfill
    if federating:  # E2EE EDUs from other servers: to-device messages, device lists, cross-signing keys
        e2e_fed = e2e.federation
        handlers = {"m.direct_to_device": e2e_fed.on_direct_to_device,
                    "m.device_list_update": e2e_fed.on_device_list_update,
                    "m.signing_key_update": e2e_fed.on_signing_key_update}
        for edu_type, handler in handlers.items():
            services.receiver.edu_handlers[edu_type] = _ignoring_result(handler)
    return services


def _ignoring_result(handler: Callable[[str, Any], Awaitable[object]]) -> Callable[[str, Any], Awaitable[None]]:
    async def run(origin: str, content: Any) -> None:
        await handler(origin, content)

    return run
