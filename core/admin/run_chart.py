"""A run as a picture on its admin page: users done over time and its run categories, inline SVG.

Server-rendered, no script. The curve is read from the users' sync states: those whose last
sync of the run's trigger ended inside the run's window. A later sync of a user replaces
their time, so an old run's curve thins out; the chart says how many users it still shows.
The mix of run categories comes from the run's own counters and is always exact.
"""

from datetime import datetime, timedelta
from typing import cast

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from core.models import FAILED_SYNC_STATUSES, EntitlementSyncState, SyncRun

WIDTH, HEIGHT = 640, 170
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 12, 28
_PLOT_W, _PLOT_H = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
# Time steps of the curve: enough for a smooth line, few enough for a small page.
_STEPS = 120
# A run category (done split into unchanged and changed), its colour, and its counter.
_MIX = (
    ("unchanged", "#4c9f70", lambda run: run.users_done - run.users_changed),
    ("changed", "#3b6fb6", lambda run: run.users_changed),
    ("failed", "#c2453a", lambda run: run.users_failed),
    ("skipped", "#9a9a9a", lambda run: run.users_skipped),
)


def run_chart(run: SyncRun) -> SafeString:
    """The run's progress curve and mix of run categories, as one inline SVG and a caption."""
    end = run.finished_at or timezone.now()
    finished = (
        EntitlementSyncState.objects.filter(
            last_trigger=run.trigger, finished_at__gte=run.started_at, finished_at__lte=end
        )
        .order_by("finished_at")
        .values_list("finished_at", "status")
    )
    counted = run.users_done + run.users_failed + run.users_skipped
    return render_chart(
        started_at=run.started_at,
        ended_at=end,
        # Rows filtered on finished_at: none is null.
        finishes=[
            (cast(datetime, at), status in FAILED_SYNC_STATUSES)
            for at, status in finished.iterator()
        ],
        total=max(run.users_enqueued, counted),
        mix={name: count(run) for name, _colour, count in _MIX},
    )


def render_chart(
    *,
    started_at: datetime,
    ended_at: datetime,
    finishes: list[tuple[datetime, bool]],
    total: int,
    mix: dict[str, int],
) -> SafeString:
    """The SVG for syncs ending at `finishes` (time, failed) out of `total` users, and the mix."""
    span = max((ended_at - started_at).total_seconds(), 1e-3)
    top = max(total, len(finishes), 1)
    done_line, failed_line = _curves(started_at, span, finishes)
    shown = (
        f"{len(finishes)} of {sum(mix.values())} counted users on the curve"
        if len(finishes) < sum(mix.values())
        else f"{len(finishes)} users"
    )
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}" class="run-chart" font-family="sans-serif" font-size="11">'
        "<title>Users synced over the run: {shown}</title>"
        '<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>'
        '<polyline fill="none" stroke="#3b6fb6" stroke-width="2" points="{done}"/>'
        '<polyline fill="none" stroke="#c2453a" stroke-width="1.5" points="{failed}"/>'
        '<text x="{yl}" y="{ty}" text-anchor="end">{top}</text>'
        '<text x="{yl}" y="{by}" text-anchor="end">0</text>'
        '<text x="{l}" y="{xl}">0 s</text>'
        '<text x="{r}" y="{xl}" text-anchor="end">{elapsed}</text>'
        '<text x="{mid}" y="{xl}" text-anchor="middle">'
        "syncs ended (blue), of them failed (red): {shown}</text></svg>{bar}",
        w=WIDTH,
        h=HEIGHT,
        l=_LEFT,
        t=_TOP,
        pw=_PLOT_W,
        ph=_PLOT_H,
        done=_points(done_line, top),
        failed=_points(failed_line, top),
        yl=_LEFT - 4,
        ty=_TOP + 10,
        by=_TOP + _PLOT_H,
        top=top,
        xl=HEIGHT - 8,
        r=WIDTH - _RIGHT,
        mid=_LEFT + _PLOT_W // 2,
        elapsed=_duration(span),
        shown=shown,
        bar=_mix_bar(mix),
    )


def _curves(
    started_at: datetime, span: float, finishes: list[tuple[datetime, bool]]
) -> tuple[list[int], list[int]]:
    """Users done and failed by the end of each of the _STEPS time steps (cumulative)."""
    done, failed = [0] * (_STEPS + 1), [0] * (_STEPS + 1)
    for at, is_failed in finishes:
        step = min(_STEPS, max(0, round((at - started_at).total_seconds() / span * _STEPS)))
        done[step] += 1
        failed[step] += is_failed
    for step in range(1, _STEPS + 1):
        done[step] += done[step - 1]
        failed[step] += failed[step - 1]
    return done, failed


def _points(counts: list[int], top: int) -> str:
    return " ".join(
        f"{_LEFT + _PLOT_W * step / _STEPS:.1f},{_TOP + _PLOT_H * (1 - count / top):.1f}"
        for step, count in enumerate(counts)
    )


def _mix_bar(mix: dict[str, int]) -> SafeString:
    """The run categories as one horizontal bar, each one's share in its colour, and a legend."""
    total = sum(mix.values())
    x = 0.0
    segments = []
    for name, colour, _count in _MIX:
        width = WIDTH * mix[name] / total if total else 0
        # Numbers formatted here: format_html escapes its arguments into strings first.
        segments.append((f"{x:.1f}", f"{width:.1f}", colour, name, mix[name]))
        x += width
    legend = format_html_join(
        " ",
        '<span style="color:{}">&#9632;</span>&nbsp;{}&nbsp;{}',
        ((colour, name, mix[name]) for name, colour, _count in _MIX),
    )
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{}" height="16" '
        'class="run-mix"><title>Users by run category</title>{}</svg>'
        '<p class="run-mix-legend">{}</p>',
        WIDTH,
        format_html_join(
            "",
            '<rect x="{}" y="0" width="{}" height="16" fill="{}"><title>{}: {}</title></rect>',
            segments,
        ),
        legend,
    )


def _duration(seconds: float) -> str:
    """A short duration: 42 s, 3 min 5 s, 1 h 12 min."""
    whole = timedelta(seconds=round(seconds))
    minutes, secs = divmod(int(whole.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
