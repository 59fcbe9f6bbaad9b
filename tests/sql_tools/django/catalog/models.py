import uuid

from django.db import models
from django.db.models.functions import Now


class Author(models.Model):
    name = models.CharField(max_length=80, unique=True)
    born = models.DateField(null=True)


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200, db_index=True)
    uid = models.UUIDField(default=uuid.uuid4, unique=True)
    tags = models.JSONField(default=list)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    loan = models.DurationField(null=True)
    added = models.DateTimeField(db_default=Now())
