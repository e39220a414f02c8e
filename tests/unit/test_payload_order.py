"""Which peers a payload is asked of, in turn: those connected directly before those reached only through a
relay (a relay bounds its circuits and carries everyone's traffic), the peer pulled from first of its kind."""

from flair_node.daemon.peer_links import MAX_HOLDERS, payload_order


def test_a_payload_is_asked_of_directly_connected_members_before_the_relayed_peer_it_was_announced_by():
    relayed = {"publisher", "far"}
    order = payload_order("publisher", ["near", "far", "other"], lambda p: p in relayed)
    assert order == ["near", "other", "publisher", "far"]


def test_the_peer_pulled_from_comes_first_when_it_is_connected_directly_and_the_list_is_bounded():
    others = [f"member-{i}" for i in range(10)]
    order = payload_order("publisher", others, lambda p: False)
    assert order == ["publisher", *others[:MAX_HOLDERS - 1]]
