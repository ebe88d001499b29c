"""Fuzz sip.message.parse: any bytes give a SipMessage or a SipError, nothing else."""

from harness import run

from sip import message


def target(data: bytes) -> None:
    try:
        m = message.parse(data)
    except message.SipError as exc:
        assert exc.reason
        return
    # Every lazy field must be readable without raising.
    _ = (m.ruri_user, m.from_user, m.to_user, m.via_branch, m.session_expires, m.min_se,
         m.reason, m.has_record_route)


if __name__ == "__main__":
    run(target)
