"""The learned delivery-date model, as ``waybill eta train`` and the worker store it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

from waybill.models.types import UTCDateTime


class EtaModel(SQLModel, table=True):
    """One trained estimator (``tracking.estimate.Model.to_json``); the newest row is used."""

    __tablename__ = "eta_model"

    id: int | None = Field(default=None, primary_key=True)
    trained_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    deliveries: int = 0  # delivered orders it learned from
    body: str = Field(sa_column=Column(sa.Text(), nullable=False))
