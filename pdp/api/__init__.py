"""The API's shapes (protobuf) and the engine's (plain values), mapped both ways in one place:
the server and the offline tools (``pdp eval``, policy tests, replay) share it."""
