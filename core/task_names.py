"""The names of the entitlements tasks, defined once: core sends them, the worker defines them.

Stable public identifiers (operators read them in Flower and in the beat schedule). A module
of its own, importing nothing, so the worker's queue routing can read it before Django is set up.
"""

import enum


class TaskName(enum.StrEnum):
    """The entitlements tasks."""

    SYNC_USER = "entitlements.sync_user"
    SYNC_ALL_ADMINS = "entitlements.sync_all_admins"
    SYNC_DOMAIN_ADMINS = "entitlements.sync_domain_admins"
    SYNC_ORGANISATION_ADMINS = "entitlements.sync_organisation_admins"
    SYNC_USERS_BATCH = "entitlements.sync_users_batch"
    SWEEP_PENDING_SYNCS = "entitlements.sweep_pending_syncs"
