"""Django against the database in SQL_TOOLS_DATABASE, through management commands run
with call_command (Django's settings are process-global, so the test runs this in a
subprocess): migrate, the ORM, migrate again, inspectdb, migrate to zero and back.
Prints one JSON object with what the test checks."""

import datetime
import decimal
import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "agora_site.settings"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402


def command(*args: str, **options) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


def main() -> None:
    from catalog.models import Author, Book

    report: dict = {"migrate": command("migrate", interactive=False)}
    ursula = Author.objects.create(name="Ursula", born=datetime.date(1929, 10, 21))
    iain = Author.objects.create(name="Iain")
    Book.objects.create(author=ursula, title="The Dispossessed", tags=["anarchy", "physics"],
                        price=decimal.Decimal("9.99"), loan=datetime.timedelta(days=14))
    Book.objects.create(author=ursula, title="Lathe of Heaven", tags=["dreams"], price=decimal.Decimal("7.50"))
    Book.objects.create(author=iain, title="Excession", tags=["culture"], price=decimal.Decimal("8.25"))
    report["author_ids"] = list(Author.objects.order_by("id").values_list("id", flat=True))
    report["book_counts"] = {a.name: a.n for a in Author.objects.annotate(n=Count("books")).order_by("name")}
    report["tagged_dreams"] = list(Book.objects.filter(tags__contains=["dreams"]).values_list("title", flat=True))
    report["titles_ilike"] = sorted(Book.objects.filter(title__icontains="THE").values_list("title", flat=True))
    book = Book.objects.get(title="The Dispossessed")
    report["loan_days"] = book.loan.days
    report["added_is_aware"] = book.added.tzinfo is not None
    report["price"] = str(book.price)
    with connection.cursor() as cur:
        cur.execute("SELECT current_user")
        report["current_user"] = cur.fetchone()[0]
    report["migrate_again"] = command("migrate", interactive=False)
    report["inspectdb"] = command("inspectdb", "catalog_author", "catalog_book")
    report["migrate_zero"] = command("migrate", "catalog", "zero", interactive=False)
    report["tables_after_zero"] = sorted(t for t in connection.introspection.table_names() if t.startswith("catalog_"))
    report["migrate_back"] = command("migrate", "catalog", interactive=False)
    print(json.dumps(report))


main()
