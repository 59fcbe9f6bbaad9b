"""Placeholder being written in this session; replaced before commit."""

from fastapi import APIRouter

router = APIRouter()
