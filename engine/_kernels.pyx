# placeholder replaced below
def openmp_enabled():
    return False
