"""A NUL in a request's address is refused before any view reads it (Django admin filters,
searches): PostgreSQL cannot compare text with a NUL, and the query would fail with a 500."""

from django.http import HttpResponseBadRequest, JsonResponse

REFUSAL = "The address must not hold a NUL character."


def refuse_nul_in_address(get_response):
    """Answer 400 (JSON under /api/) to a path or query string holding a NUL (`%00`)."""

    def middleware(request):
        if "\x00" in request.path or any(
            "\x00" in name or any("\x00" in value for value in values)
            for name, values in request.GET.lists()
        ):
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": REFUSAL}, status=400)
            return HttpResponseBadRequest(REFUSAL, content_type="text/plain; charset=utf-8")
        return get_response(request)

    return middleware
