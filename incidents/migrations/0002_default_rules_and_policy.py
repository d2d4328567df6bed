from django.db import migrations


def seed(apps, schema_editor):
    from incidents.rules import DEFAULT_RULES

    rule_model = apps.get_model("incidents", "DetectionRule")
    for rule in DEFAULT_RULES:
        rule_model.objects.get_or_create(key=rule["key"], defaults=rule)
    apps.get_model("incidents", "OpsPolicy").objects.get_or_create(pk=1)


class Migration(migrations.Migration):
    dependencies = [("incidents", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
