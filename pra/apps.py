from django.apps import AppConfig


class PraConfig(AppConfig):
    name = "pra"
    verbose_name = "Remediation"
