"""A run as a picture on its admin page: users done over time and its run categories, inline SVG.

Server-rendered, no script. The curve is read from the users' sync states: those whose last
sync of the run's trigger ended inside the run's window. A later sync of a user replaces
their time, so an old run's curve thins out; the chart says how many users it still shows.
The mix of run categories comes from the run's own counters and is always exact.
"""

from datetime import datetime, timedelta
from itertools import accumulate

from django.db import connections, router
from django.db.models import Count, IntegerField, Q
from django.db.models.expressions import RawSQL
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
    finished = EntitlementSyncState.objects.filter(
        last_trigger=run.trigger, finished_at__gte=run.started_at, finished_at__lte=end
    )
    span = max((end - run.started_at).total_seconds(), 1e-3)
    if connections[router.db_for_read(EntitlementSyncState)].vendor == "postgresql":
        steps = _steps_counted_in_sql(finished, started_at=run.started_at, span=span)
    else:
        steps = _steps_counted_here(finished, started_at=run.started_at, span=span)
    counted = run.users_done + run.users_failed + run.users_skipped
    return render_chart(
        started_at=run.started_at,
        ended_at=end,
        steps=steps,
        total=max(run.users_enqueued, counted),
        mix={name: count(run) for name, _colour, count in _MIX},
    )


# Syncs ended and of them failed, per time step of the curve (not cumulative).
StepCounts = tuple[list[int], list[int]]


def _steps_counted_in_sql(finished, *, started_at: datetime, span: float) -> StepCounts:
    """Count each step's syncs in the database: _STEPS rows read, not one per user (a run of a
    million users would otherwise bring a million rows to the page)."""
    step = RawSQL(
        "LEAST(%s, GREATEST(0, ROUND(EXTRACT(EPOCH FROM (finished_at - %s)) / %s * %s)))",
        (_STEPS, started_at, span, _STEPS),
        output_field=IntegerField(),
    )
    done, failed = [0] * (_STEPS + 1), [0] * (_STEPS + 1)
    rows = (
        finished.annotate(step=step)
        .values("step")
        .annotate(ended=Count("pk"), failed=Count("pk", filter=Q(status__in=FAILED_SYNC_STATUSES)))
        .order_by()
        .values_list("step", "ended", "failed")
    )
    for number, ended, failed_count in rows:
        done[int(number)] += ended
        failed[int(number)] += failed_count
    return done, failed


def _steps_counted_here(finished, *, started_at: datetime, span: float) -> StepCounts:
    """The same counts from the rows themselves (SQLite in development)."""
    done, failed = [0] * (_STEPS + 1), [0] * (_STEPS + 1)
    for at, status in finished.values_list("finished_at", "status").iterator():
        number = min(_STEPS, max(0, round((at - started_at).total_seconds() / span * _STEPS)))
        done[number] += 1
        failed[number] += status in FAILED_SYNC_STATUSES
    return done, failed


def render_chart(
    *,
    started_at: datetime,
    ended_at: datetime,
    steps: StepCounts,
    total: int,
    mix: dict[str, int],
) -> SafeString:
    """The SVG for the syncs ended (and failed) per step out of `total` users, and the mix."""
    span = max((ended_at - started_at).total_seconds(), 1e-3)
    done_line, failed_line = list(accumulate(steps[0])), list(accumulate(steps[1]))
    on_curve = done_line[-1]
    top = max(total, on_curve, 1)
    shown = (
        f"{on_curve} of {sum(mix.values())} counted users on the curve"
        if on_curve < sum(mix.values())
        else f"{on_curve} users"
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
        elapsed=duration_text(span),
        shown=shown,
        bar=_mix_bar(mix),
    )


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


def duration_text(seconds: float) -> str:
    """A short duration: 42 s, 3 min 5 s, 1 h 12 min."""
    whole = timedelta(seconds=round(seconds))
    minutes, secs = divmod(int(whole.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
