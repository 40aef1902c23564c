"""Files on disk, the way every part of wan_train writes them: durable (fsynced) atomic writes, atomic folder
replacement and append-only JSON lines. Standard library only, so any subpackage may import it (data included);
import the modules directly (`from wan_train.fileio.durable import ...`)."""
