"""Sign-in routes: email link and code, logout."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
)
from pydantic import ValidationError

from waybill.api.answers import browser_language
from waybill.api.spec import operation, parse_body
from waybill.auth import login, sessions
from waybill.config import Settings
from waybill.db import get_session
from waybill.errors import ApiError, validation_fields
from waybill.models import CodeSignIn, EmailSignIn, Sent, SignedIn

bp = Blueprint("auth", __name__, url_prefix="/auth")


@bp.post("/email")
@operation("Mail a sign-in link and code", body=EmailSignIn, responses={202: Sent}, tag="auth")
def email() -> Any:
    form_post = not request.is_json and request.form.get("email") is not None
    if form_post:
        try:
            data = EmailSignIn.model_validate({"email": request.form["email"]})
        except ValidationError as exc:
            raise ApiError(422, "invalid", "not an email address", validation_fields(exc)) from None
    else:
        data = parse_body(EmailSignIn)
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    login.request_mail(app, data.email, browser_language())
    if form_post:
        return render_template("check_mail.html", email=data.email), 202
    return jsonify(sent=True), 202


@bp.get("/link/<token>")
def link_page(token: str) -> Any:
    """Show a button; consume nothing, since mail scanners open links."""
    if login.peek_link(session=get_session(), token=token) is None:
        return render_template("link_gone.html"), 410
    return render_template("link.html", token=token)


@bp.post("/link/<token>")
def link_sign_in(token: str) -> Any:
    db = get_session()
    customer = login.consume_link(session=db, token=token)
    if customer is None:
        return render_template("link_gone.html"), 410
    response = redirect("/", code=303)
    sessions.start(session=db, customer=customer, response=response)
    db.commit()
    return response


@bp.post("/code")
@operation(
    "Sign in with the 6-digit code from the mail",
    body=CodeSignIn,
    responses={200: SignedIn, 401: None},
    tag="auth",
)
def code_sign_in() -> Any:
    data = parse_body(CodeSignIn)
    settings: Settings = current_app.config["WAYBILL_SETTINGS"]
    db = get_session()
    customer = login.consume_code(
        session=db, email=data.email, code=data.code.strip(), secret=settings.secret_key
    )
    if customer is None:
        db.commit()  # keep the attempt count
        raise ApiError(401, "invalid_code", "that code is wrong, used or expired")
    response = jsonify(signed_in=True, redirect="/")
    sessions.start(session=db, customer=customer, response=response)
    db.commit()
    return response


@bp.post("/logout")
def logout() -> Response:
    db = get_session()
    sessions.end_current(session=db)
    db.commit()
    wants_page = "text/html" in request.headers.get("Accept", "") and not request.is_json
    response = redirect("/", code=303) if wants_page else make_response("", 204)
    sessions.clear_cookie(response)
    return response
