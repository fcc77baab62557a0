# The batches counted in their run, kept in the database with the counts they added: a
# marker in the cache, set before the count, outlived a batch killed between the two.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0011_leaner_indexes_and_sync_state_fillfactor"),
    ]

    operations = [
        migrations.CreateModel(
            name="CountedBatch",
            fields=[
                ("delivery", models.CharField(max_length=300, primary_key=True, serialize=False)),
                (
                    "run",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="counted_batches",
                        to="core.syncrun",
                    ),
                ),
            ],
        ),
    ]
