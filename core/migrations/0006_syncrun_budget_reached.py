from django.db import migrations


class Migration(migrations.Migration):
    """A run's flag says what it means: the run reached its revocation budget (its further
    revocations are held). "revocations_held" stays the name of a sync status (the identity
    rule) and of the run's error code."""

    dependencies = [
        ("core", "0005_manual_trigger"),
    ]

    operations = [
        migrations.RenameField(
            model_name="syncrun", old_name="revocations_held", new_name="budget_reached"
        ),
    ]
