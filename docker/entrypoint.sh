#!/bin/sh
# Container start: make sure the model repository on the data volume holds the bundled model
# (retraining publishes new versions next to it), apply migrations, then run the command.
set -eu
repository="${MSCREEN_MODEL_REPOSITORY:-/data/models}"
bundled="$(python -c 'from models.repository import BUNDLED_REPOSITORY; print(BUNDLED_REPOSITORY)')"
mkdir -p "$repository"
for model in "$bundled"/*/; do
  name="$(basename "$model")"
  [ -d "$repository/$name" ] || cp -r "$model" "$repository/$name"
done
mscreen db upgrade
exec "$@"
