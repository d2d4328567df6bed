from django.db import migrations


def seed(apps, schema_editor):
    from portal.approvals import DEFAULT_RULES

    rule_model = apps.get_model("portal", "ApprovalRule")
    for impact, values in DEFAULT_RULES.items():
        rule_model.objects.get_or_create(impact=impact, defaults=values)


class Migration(migrations.Migration):
    dependencies = [("portal", "0003_approvals_and_tokens")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
